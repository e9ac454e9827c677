"""An HF model's own tokenizer (`tokenizer.json`, read with the `tokenizers` package) behind the
same interface as the byte tokenizer (moe_serve/data/tokenizer.py): encode(text, bos),
decode(ids), bos_id, eos_id.

`encode(text, bos=True)` is what `transformers` gives for `tokenizer(text)`: the tokenizer's own
post-processor adds BOS where the model has one (Mixtral's does; Qwen's adds none);
`bos=False` (continuations) adds no special token.
"""
import json
import os

from tokenizers import Tokenizer

from moe_serve import checkpoint

TOKENIZER_FILE = "tokenizer.json"


def _special(directory, name):
  """The id of special token `name` ("bos"/"eos") from tokenizer_config.json or config.json."""
  for fname, key in (("tokenizer_config.json", f"{name}_token"), ("config.json",
                                                                   f"{name}_token_id")):
    path = os.path.join(directory, fname)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      value = json.load(f).get(key)
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
      value = value.get("content")
    if isinstance(value, list):
      value = value[0] if value else None
    if value is not None:
      return value
  return None


class HFTokenizer:
  """`tokenizer.json` of an HF model directory."""

  def __init__(self, directory):
    path = os.path.join(directory, TOKENIZER_FILE)
    try:
      self._tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own exception type
      raise checkpoint.CheckpointError(f"{path} could not be read as a tokenizer "
                                       f"({type(e).__name__}: {e})") from None
    self.name = path
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id = (self._id(_special(directory, n)) for n in ("bos", "eos"))

  def _id(self, token):
    if token is None or isinstance(token, int):
      return token
    return self._tok.token_to_id(token)

  def encode(self, text, bos=True):
    return self._tok.encode(text, add_special_tokens=bos).ids

  def decode(self, ids):
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
