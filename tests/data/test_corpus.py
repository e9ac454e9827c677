"""Corpus: identical per seed, train and held-out disjoint, packing puts loss where it belongs."""
import ml_collections
import numpy as np
import pytest

from moe_serve.data import batches, corpus, eval_prompts, tasks, text, tokenizer

_DATA = ml_collections.ConfigDict(dict(
    seed=0, batch_size=4, seq_len=128, text_chars=64,
    mixture=dict(add=1.0, reverse=1.0, sort=1.0, lookup=1.0, prose=0.3, code=0.3)))


@pytest.fixture(scope="module")
def corp():
  return corpus.Corpus(0)


def test_same_seed_same_corpus(corp):
  other = corpus.Corpus(0)
  assert other.hash() == corp.hash()
  for d in corpus.DOMAINS:
    assert other.heldout(d, 8) == corp.heldout(d, 8)
  for step in (0, 5):
    a, b = batches.train_batch(corp, _DATA, step), batches.train_batch(other, _DATA, step)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_different_seed_or_step_differs(corp):
  other = corpus.Corpus(1)
  assert other.heldout("add", 8) != corp.heldout("add", 8)
  a, b = batches.train_batch(corp, _DATA, 0), batches.train_batch(corp, _DATA, 1)
  assert not np.array_equal(a.tokens_BxL, b.tokens_BxL)


def test_splits_are_disjoint(corp):
  rng = np.random.default_rng(0)
  for d in tasks.TASK_DOMAINS:
    held = {ex.prompt for ex in corp.heldout(d, 50)}
    train = {corp.sample(rng, d, 0).prompt for _ in range(2000)}
    assert not held & train
    assert all(tasks.is_heldout(d, p) for p in held)
    assert not any(tasks.is_heldout(d, p) for p in train)
  for d in text.TEXT_DOMAINS:
    train_docs, held_docs = corp.text_splits[d]
    assert not {n for n, _ in train_docs} & {n for n, _ in held_docs}
    for ex in corp.heldout(d, 4):  # held-out windows come from held-out documents
      assert any(ex.prompt + ex.answer in body for _, body in held_docs)
  # The sampler of a task domain really draws from both sides of the hash split.
  assert 0.03 < np.mean([tasks.is_heldout("add", tasks.add(rng)[0]) for _ in range(2000)]) < 0.2


def test_answers_are_exact():
  rng = np.random.default_rng(3)
  for _ in range(50):
    p, a = tasks.add(rng)
    assert int(p[:-1].split("+")[0]) + int(p[:-1].split("+")[1]) == int(a)
    p, a = tasks.sort(rng)
    assert a == "".join(sorted(p[len("sort: "):-1]))
    p, a = tasks.lookup(rng)
    pairs = dict(kv.split(":") for kv in p[len("lookup: "):-2].split())
    assert pairs[p[-2]] == a


def test_pack_loss_on_answers_only(corp):
  ex = corpus.Example("reverse", "reverse: abc=", "cba")
  b = batches.pack([ex, ex], 1, 64)
  n = len(tokenizer.encode(ex.prompt + ex.answer, bos=True, eos=True)) - 1
  assert (b.segment_ids_BxL[0, :n] == 0).all() and (b.segment_ids_BxL[0, n:2 * n] == 1).all()
  assert (b.segment_ids_BxL[0, 2 * n:] == -1).all() and b.weights_BxL[0, 2 * n:].sum() == 0
  got = tokenizer.decode(b.targets_BxL[0, :n][b.weights_BxL[0, :n] > 0])
  assert got == "cba"  # answer then EOS (dropped by decode)
  assert b.targets_BxL[0, n - 1] == tokenizer.EOS
  np.testing.assert_array_equal(b.tokens_BxL[0, 1:n], b.targets_BxL[0, :n - 1])
  full = batches.train_batch(corp, _DATA, 0)
  assert (full.segment_ids_BxL >= 0).mean() > 0.8  # leftovers are mostly refilled with tasks


def test_committed_eval_set_is_heldout():
  rows = eval_prompts.load()
  by_domain = {d: [ex for ex in rows if ex.domain == d] for d in corpus.DOMAINS}
  assert all(len(v) >= 32 for v in by_domain.values())
  for d in tasks.TASK_DOMAINS:
    assert all(tasks.is_heldout(d, ex.prompt) for ex in by_domain[d])
    assert len({ex.prompt for ex in by_domain[d]}) == len(by_domain[d])
  # Task rows do not depend on the interpreter: regenerating them gives the committed file.
  rebuilt = [r for r in eval_prompts.build() if r["domain"] in tasks.TASK_DOMAINS]
  assert [corpus.Example(r["domain"], r["prompt"], r["answer"]) for r in rebuilt] == \
      [ex for ex in rows if ex.is_task]
