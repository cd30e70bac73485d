"""Captions of mirrored images: 'left' and 'right' swapped where they name a side."""
from __future__ import annotations

import re

_LEFT_RIGHT = re.compile(r"\b(left|right)(most|wards?)?\b", re.IGNORECASE)
# 'left'/'right' mean a side after these words ("on the left", "top right", "turn left") ...
_SIDE_AFTER = {"the", "to", "from", "its", "his", "her", "their", "my", "your", "top", "bottom",
               "upper", "lower", "middle", "far"}
# Motions: the word after them is a direction ("turning left", "looking right", "a car turned left")
_MOTIONS = {"turn", "turns", "turning", "turned", "go", "goes", "going", "went", "head", "heads",
            "heading", "headed", "look", "looks", "looking", "looked", "face", "faces", "facing",
            "faced", "point", "points", "pointing", "pointed", "move", "moves", "moving", "moved",
            "walk", "walks", "walking", "walked", "run", "runs", "running", "drive", "drives",
            "driving", "fly", "flies", "flying", "ride", "rides", "riding", "lean", "leans",
            "leaning", "leaned", "veer", "veers", "veering", "veered", "swerving", "swerved",
            "glancing", "staring", "gazing", "swing", "swings", "swinging",
            # irregular pasts and stepping: without them a clause-final "left" ("a car drove
            # left") was read as the verb and kept, while "drove right" swapped. Not the forms
            # that are also nouns ("two rolls left", "steps", "a bend"): 'left' stays there.
            "ran", "drove", "flew", "rode", "swung", "stepping", "stepped", "jumping", "jumped",
            "rolling", "rolled", "swimming", "swam", "leant", "bending", "bent", "glanced",
            "stared", "gazed", "swerve", "swerves", "tilting", "tilted", "curving", "curved",
            "sped", "drifting", "drifted"}
# After a motion that does not steer, 'right' before these is "straight, directly" ("jumped right
# into the pool", "ran right up to"); after turn/veer/swerve/head/face it is the side ("turned
# right into the drive", "a horse facing right in a field").
_STEERS = {"turn", "turns", "turning", "turned", "veer", "veers", "veering", "veered", "swerve",
           "swerves", "swerving", "swerved", "head", "heads", "heading", "headed", "face", "faces",
           "facing", "faced"}
_RIGHT_AS_DIRECTLY = {"into", "up", "over", "through", "past", "off", "onto", "out", "down",
                      "back", "away", "next", "behind", "under", "at", "in", "across", "by"}
# ... and, otherwise, not after these ("was left", "all right") or before these words: "right" as
# in "right next to", "left" the verb as in "a bag left on a bench" (COCO-style captions).
_NO_SIDE_AFTER = {"was", "were", "is", "are", "be", "been", "being", "has", "have", "had", "all",
                  "just"}
_NO_SIDE_BEFORE = {
    "right": {"next", "now", "away", "there", "here", "in", "on", "at", "by", "behind", "beside",
              "above", "below", "under", "near", "up", "down", "over", "into", "through",
              "outside", "inside", "before", "after", "against", "along", "across", "between",
              "around", "off", "out", "back",
              "triangle", "triangles", "angle", "angles", "angled"},  # 90 degrees, not a side
    "left": {"on", "in", "at", "by", "behind", "alone", "over", "out", "open", "unattended",
             "outside", "inside", "there", "here", "sitting", "standing", "lying", "parked",
             "for", "with", "after", "from", "empty"},
}


# "left" the verb also comes before its object ("a man who left his bag") and ends a clause
# ("one slice of pizza left.") unless a motion precedes it; after "on"/"at", a side unless the
# next word says otherwise ("on the left", but "on right now").
_LEFT_OBJECTS = {"his", "her", "their", "its", "my", "your", "our", "a", "an", "the", "them",
                 "him", "it", "this", "that", "some"}


# 'left of' names what remains after these ("what's left of the pizza", "all that is left of it",
# "nothing left of"), read back past _LINKS; otherwise it is a side ("the box is left of the cup").
_REMAINS = {"what", "whats", "all", "nothing", "much", "anything", "something", "everything",
            "whatever", "none"}
_LINKS = {"is", "was", "are", "were", "s", "that"}


def _remains_before(text: str) -> bool:
  """Whether 'left of' after `text` means what remains of something."""
  for word in reversed(re.findall(r"[A-Za-z]+", text.lower())):
    if word not in _LINKS:
      return word in _REMAINS
  return False


def _is_side(match: re.Match) -> bool:
  if match.group(2):  # leftmost, rightward(s): always a side
    return True
  word = match.group(1).lower()
  before = re.search(r"([A-Za-z]+)[\s-]+$", match.string[:match.start()])
  before = before.group(1).lower() if before else ""
  rest = match.string[match.end():]
  after = re.match(r"[\s-]+([A-Za-z]+)", rest)  # "right angle", "right-angled", "left-over"
  after = after.group(1).lower() if after else ""
  if before in _MOTIONS and word == "right" and before not in _STEERS:
    return after not in _RIGHT_AS_DIRECTLY
  if before in _SIDE_AFTER or before in _MOTIONS:
    return True
  if after == "of":  # "is right of", "is left of the cup"; not "what is left of the cake"
    return word == "right" or not _remains_before(match.string[:match.start()])
  if word == "left" and before not in ("", "on", "at") and (
      after in _LEFT_OBJECTS or re.match(r"\s*([.,;:!?)]|$)", rest)):
    return False
  return before not in _NO_SIDE_AFTER and after not in _NO_SIDE_BEFORE[word]


def _swapped(match: re.Match) -> str:
  word = match.group(1)
  if not _is_side(match):
    return match.group(0)
  new = "right" if word.lower() == "left" else "left"
  if word.isupper():
    new = new.upper()
  elif word[0].isupper():
    new = new.capitalize()
  return new + (match.group(2) or "")


def swap_left_right(text: str) -> str:
  """The caption of the mirrored image: 'left' <-> 'right' where they name a side (also Left,
  LEFT, leftmost, leftward(s)), not in "a bag left on a bench" or "right next to"."""
  return _LEFT_RIGHT.sub(_swapped, text)
