"""Packed sequences with document boundaries: a row of documents [A, B, C] gives each document the logits it has
alone, whichever way the boundaries come (position_ids, seq_idx, cu_seq_lens as DataCollatorWithFlattening
makes them), with padding, under gradient checkpointing, and no gradient crosses a boundary."""

import pytest
import torch

from conftest import VOCAB, tiny_model

LENGTHS = (5, 1, 9, 2)  # a one-token document, documents shorter than the conv window, one spanning chunks


def _documents(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in LENGTHS]


def _positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])[None]


def _alone(model, docs):
    return [model(doc[None]).logits[0] for doc in docs]


@pytest.fixture(params=["paper", "large"])
def model(request):
    # chunk_size 4: boundaries fall at chunk starts, inside chunks, and several in one chunk
    return tiny_model(request.param, chunk_size=4)


def test_each_document_gets_its_logits_alone(model):
    docs = _documents()
    row = torch.cat(docs)[None]
    with torch.no_grad():
        alone = _alone(model, docs)
        leaky = model(row).logits[0]
        packed = model(row, position_ids=_positions(LENGTHS)).logits[0]
    start = 0
    for doc, reference in zip(docs, alone):
        torch.testing.assert_close(packed[start: start + len(doc)], reference, rtol=1e-5, atol=1e-5)
        start += len(doc)
    assert not torch.allclose(leaky[LENGTHS[0]:], packed[LENGTHS[0]:], atol=1e-4)  # without boundaries it leaks


def test_data_collator_with_flattening_in_all_its_forms(model):
    from transformers import DataCollatorWithFlattening

    docs = _documents(seed=1)
    alone = torch.cat(_alone(model, docs))
    features = [{"input_ids": doc.tolist()} for doc in docs]
    for options in ({}, {"return_flash_attn_kwargs": True}, {"return_seq_idx": True},
                    {"return_flash_attn_kwargs": True, "return_seq_idx": True, "return_position_ids": False}):
        batch = DataCollatorWithFlattening(return_tensors="pt", **options)(features)
        batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits[0]
        torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5, msg=str(options))


def test_several_rows_with_padding(model):
    docs = _documents(seed=2)
    rows = [torch.cat(docs[:2]), torch.cat(docs[2:])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    positions = torch.zeros(2, width, dtype=torch.long)
    for b, (row, lengths) in enumerate(zip(rows, (LENGTHS[:2], LENGTHS[2:]))):
        ids[b, : len(row)], mask[b, : len(row)] = row, 1
        positions[b, : len(row)] = _positions(lengths)[0]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
        alone = _alone(model, docs)
    torch.testing.assert_close(logits[0, : len(rows[0])], torch.cat(alone[:2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1, : len(rows[1])], torch.cat(alone[2:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_no_gradient_crosses_a_boundary(model, checkpointing):
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    docs = _documents(seed=3)
    embeds = model.get_input_embeddings()(torch.cat(docs)[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=_positions(LENGTHS)).logits[0]
    start_of_last = sum(LENGTHS[:-1])
    logits[start_of_last:].sum().backward()  # a loss on the last document only
    grad = embeds.grad[0]
    assert torch.count_nonzero(grad[:start_of_last]) == 0
    assert torch.count_nonzero(grad[start_of_last:]) > 0
    # and the logits under checkpointing are those without it
    model.gradient_checkpointing_disable()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=embeds, position_ids=_positions(LENGTHS)).logits[0],
                                   logits.detach(), rtol=1e-6, atol=1e-6)


def test_bad_boundaries_are_refused(model):
    ids = torch.cat(_documents())[None]
    T = ids.shape[1]
    with pytest.raises(ValueError, match="position_ids must be"):
        model(ids, position_ids=torch.arange(T - 1)[None])
    with pytest.raises(ValueError, match="seq_idx must be"):
        model(ids, seq_idx=torch.zeros(2, T, dtype=torch.long))
    for bad in ([0, 5, 5, T], [0, 5, 6], [1, 6, T], [0, 7, 4, T]):
        with pytest.raises(ValueError, match="cu_seq_lens_q must start at 0, increase strictly and end at"):
            model(ids, cu_seq_lens_q=torch.tensor(bad, dtype=torch.int32))
    with pytest.raises(ValueError, match="mark different document starts"):
        model(ids, position_ids=_positions(LENGTHS), cu_seq_lens_q=torch.tensor([0, 3, T], dtype=torch.int32))
