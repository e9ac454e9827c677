"""Byte tokenizer: exact round trip, fixed special ids."""
from hypothesis import given, settings, strategies as st

from moe_serve.data import tokenizer

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.booleans(), st.booleans())
def test_round_trip(text, bos, eos):
  ids = tokenizer.encode(text, bos=bos, eos=eos)
  assert tokenizer.decode(ids) == text
  body = ids[int(bos):len(ids) - int(eos)]
  assert all(tokenizer.OFFSET <= i < tokenizer.VOCAB_SIZE for i in body)
  assert bos == (ids[:1] == [tokenizer.BOS])
  assert eos == (ids[-1:] == [tokenizer.EOS])
  assert len(body) == len(text.encode("utf-8"))


def test_special_ids_are_fixed():
  assert (tokenizer.PAD, tokenizer.BOS, tokenizer.EOS) == (0, 1, 2)
  assert tokenizer.encode("A", bos=True, eos=True) == [1, ord("A") + 3, 2]
