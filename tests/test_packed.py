"""Packed sequences with document boundaries: a row of documents [A, B, C] gives each document the logits it has
alone, whichever way the boundaries come (position_ids, seq_idx, cu_seq_lens as DataCollatorWithFlattening
makes them), with padding, under gradient checkpointing, and no gradient crosses a boundary."""

import pytest
import torch

from conftest import VOCAB, tiny_model
from hf_xlstm.compat import set_activation_checkpointing

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
        set_activation_checkpointing(model, True)
    docs = _documents(seed=3)
    embeds = model.get_input_embeddings()(torch.cat(docs)[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=_positions(LENGTHS)).logits[0]
    start_of_last = sum(LENGTHS[:-1])
    logits[start_of_last:].sum().backward()  # a loss on the last document only
    grad = embeds.grad[0]
    assert torch.count_nonzero(grad[:start_of_last]) == 0
    assert torch.count_nonzero(grad[start_of_last:]) > 0
    # and the logits under checkpointing are those without it
    set_activation_checkpointing(model, False)
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


def test_a_documents_loss_has_its_parameter_gradients_alone(model):
    model.train()
    docs = _documents(seed=4)
    row = torch.cat(docs)[None]
    start = sum(LENGTHS[:2])
    third = docs[2]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    labels = torch.full_like(row, -100)
    labels[0, start + 1: start + len(third)] = third[1:]  # the third document's loss (its first token: no target)
    packed = grads(model(row, labels=labels, position_ids=_positions(LENGTHS)).loss)
    alone = grads(model(third[None], labels=third[None]).loss)
    assert packed.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(packed[name], alone[name], rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_with_data_collator_with_flattening(tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    model = tiny_model("paper", chunk_size=4)
    g = torch.Generator().manual_seed(5)
    docs = [torch.randint(3, VOCAB, (int(n),), generator=g).tolist() for n in torch.randint(2, 12, (24,), generator=g)]
    data = Dataset.from_dict({"input_ids": docs})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=6, per_device_eval_batch_size=6,
                             max_steps=4, learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_steps=1, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                      data_collator=DataCollatorWithFlattening(return_tensors="pt"))
    losses = [h["loss"] for h in trainer.train() and trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # the evaluation loss of packed batches is what the documents give one by one: per batch of 6 documents the
    # token mean of their losses, and Trainer's mean over the (one-row) batches
    eval_loss = trainer.evaluate()["eval_loss"]
    model.eval()
    batch_losses = []
    with torch.no_grad():
        for first in range(0, len(docs), 6):
            total = count = 0
            for doc in docs[first: first + 6]:
                ids = torch.tensor(doc)[None]
                total += model(ids, labels=ids).loss.item() * (len(doc) - 1)
                count += len(doc) - 1
            batch_losses.append(total / count)
    assert eval_loss == pytest.approx(sum(batch_losses) / len(batch_losses), rel=1e-5)
