"""Evaluation: caption accuracy and in-domain FID on captioned_shapes, and the standard FID.

  captions.py     what a captioned_shapes caption states (parsed with shapes.py's vocabulary)
  scoring.py      caption accuracy + per-attribute accuracy from a per-cell reading of images
  evaluator.py    the per-cell CNN (presence, shape, colour, size of each 3x3 cell) and its training
  shapes_eval.py  ShapesEvaluator: trained once per dataset build and cached; read/score/features
  fid.py          Fréchet distance in float64, mu/sigma statistics files
  inception.py    pytorch-fid's FID InceptionV3 in Flax, loading its .pth (or a converted .npz)
  generate.py     images for a list of captions from generator params, each batch split over a mesh
  report.py       evaluate.py's work and table
  in_training.py  TrainingEvaluator, called by the training loop every config.eval.every steps
"""
