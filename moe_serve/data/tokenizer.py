"""Byte-level tokenizer: id = byte + 3, with PAD=0, BOS=1, EOS=2. Round trip is exact."""
import numpy as np

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3
VOCAB_SIZE = 256 + OFFSET  # model.vocab_size must be >= this


def encode(text: str, bos: bool = True, eos: bool = False) -> list[int]:
  ids = [b + OFFSET for b in text.encode("utf-8")]
  return ([BOS] if bos else []) + ids + ([EOS] if eos else [])


def decode(ids) -> str:
  """Drops special ids (and any id past the byte range); invalid UTF-8 becomes U+FFFD."""
  data = bytes(int(i) - OFFSET for i in np.asarray(ids).reshape(-1)
               if OFFSET <= int(i) < VOCAB_SIZE)
  return data.decode("utf-8", errors="replace")


class ByteTokenizer:
  """The byte tokenizer behind the Tokenizer interface every prompt path takes (an HF model
  brings its own, moe_serve/hf/tokenizer.py): encode(text, bos), decode(ids), bos_id, eos_id."""
  bos_id, eos_id, vocab_size = BOS, EOS, VOCAB_SIZE
  name = "bytes"

  def encode(self, text, bos=True):
    return encode(text, bos=bos)

  def decode(self, ids):
    return decode(ids)


BYTES = ByteTokenizer()
