"""swap_left_right: the caption of a horizontally mirrored image."""
import re

from llmimg_jax.data import shapes
from llmimg_jax.data.flip import swap_left_right


def test_sides_swap_and_other_senses_of_left_and_right_stay():
  assert swap_left_right("top-left: a box; right: a leftover") == (
      "top-right: a box; left: a leftover")
  assert swap_left_right("Left: a red circle; RIGHT: the leftmost box") == (
      "Right: a red circle; LEFT: the rightmost box")
  # Sides swap; the verb 'left' and the adverb 'right' stay (COCO-style captions).
  assert swap_left_right(
      "A man turning left on the right side, a dog to his left, a bag left on a bench, a cat "
      "right next to a car, the rightmost cup was left there, all right") == (
      "A man turning right on the left side, a dog to his right, a bag left on a bench, a cat "
      "right next to a car, the leftmost cup was left there, all right")
  # The verb before its object or ending a clause stays; a motion's direction swaps.
  assert swap_left_right(
      "Only one slice of pizza left. A man who left his bag, nothing left; a dog looking left, "
      "a car turned left, a kite on left.") == (
      "Only one slice of pizza left. A man who left his bag, nothing left; a dog looking right, "
      "a car turned right, a kite on right.")
  for kept in ("There is no pudding left.", "a plate with one wing left, and a cup",
               "a tv turned on right now", "a lamp on right next to the bed"):
    assert swap_left_right(kept) == kept
  assert swap_left_right("a woman looking left a man looking right") == (
      "a woman looking right a man looking left")


def test_leftward_and_rightward_swap():
  """'leftward(s)'/'rightward(s)' were kept: a flipped arrow pointing right was captioned
  'an arrow pointing leftward'."""
  assert swap_left_right("an arrow pointing leftward, a bird flying Rightwards, LEFTWARDS") == (
      "an arrow pointing rightward, a bird flying Leftwards, RIGHTWARDS")


def test_flip_swaps_every_side_word_of_captioned_shapes():
  spec = shapes.SceneSpec(resolution=32)
  for i in range(300):
    for caption in shapes.render_example(spec, "train", i, num_captions=3)["captions"]:
      sides = re.findall(r"left|right", caption)
      flipped = swap_left_right(caption)
      assert re.findall(r"left|right", flipped) == [
          {"left": "right", "right": "left"}[w] for w in sides], caption


def test_left_of_and_right_of_after_a_verb():
  """'X is left of Y' and 'X is right of Y' were kept (taken for the verb 'left' and the adverb
  'right'), and "what's left of the pizza" (what remains) became "what's right of the pizza"."""
  assert swap_left_right("the red box is left of the cup, a dog is right of a cat") == (
      "the red box is right of the cup, a dog is left of a cat")
  for kept in ("what's left of a pizza", "whats left of the cake on a plate",
               "all that is left of the sandwich", "there is not much left of the building",
               "nothing left of it"):
    assert swap_left_right(kept) == kept


def test_a_direction_after_an_irregular_motion_verb_swaps_and_a_right_angle_stays():
  """A clause-final 'left' after drove/ran/flew/stepped was read as the verb and kept, while
  'right' swapped: both 'drove left' and 'drove right' became 'drove left'. 'A right triangle'
  (90 degrees) became 'a left triangle'."""
  for verb in ("drove", "ran", "flew", "rode", "stepped", "jumped", "swam"):
    assert swap_left_right(f"a car {verb} left. a car {verb} right") == (
        f"a car {verb} right. a car {verb} left")
  for kept in ("a right triangle", "two right angles", "a right-angled corner",
               "a man who left his bag", "one slice left.",
               # nouns that are also motions; 'right' as "directly" after a motion
               "two rolls left on a plate", "there are two rolls left.", "steps left",
               "a dog jumped right into the pool", "a man ran right up to the car",
               "a cat stared right at the camera", "a man walking right next to a car"):
    assert swap_left_right(kept) == kept
  assert swap_left_right("a car turned right into the drive, a horse facing right in a field") == (
      "a car turned left into the drive, a horse facing left in a field")
  assert swap_left_right("a left-hand glove") == "a right-hand glove"
