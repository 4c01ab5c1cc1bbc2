"""Chat-template rendering and assistant-only loss masks for instruction data (``InstructionDataModule``).

The template is the tokenizer's own, ChatML when it has none, or one given. The loss covers the assistant turns
only: each assistant turn's character span is found by rendering the conversation prefix by prefix (the prompt with
``add_generation_prompt=True``, then the prompt plus the turn), and tokens starting inside a span keep their ids in
``labels``; everything else is -100. This needs no ``{% generation %}`` support in the template; a template that
renders a prefix differently from the same part of the whole conversation is refused (never a silently wrong mask).
"""

from __future__ import annotations

from typing import Any, Literal

from kasa_lightning.datamodules.causal import IGNORE_INDEX

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template cannot give an assistant-only loss mask (a prefix renders differently)."""


class ChatEncoding:
    """Mixed into a ``CausalLMDataModule``: needs ``tokenizer``, ``chat_template_arg`` (a template, ``"chatml"`` or
    ``None``), ``max_length``, ``overlength`` and ``_turn_info`` (``None`` until first used)."""

    tokenizer: Any
    chat_template_arg: str | None
    max_length: int
    overlength: Literal["truncate", "drop"]
    _turn_info: dict[str, Any] | None
    _tokenizer: Any

    @property
    def chat_template(self) -> str:
        """The Jinja template in use (the argument, the tokenizer's own, or ChatML)."""
        if self.chat_template_arg and self.chat_template_arg.lower() != "chatml":
            return self.chat_template_arg
        if self.chat_template_arg is None and getattr(self.tokenizer, "chat_template", None):
            template = self.tokenizer.chat_template
            if isinstance(template, dict):  # several named templates: use the default one
                template = template.get("default") or next(iter(template.values()))
            return template
        return CHATML_TEMPLATE

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text through the chat template."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def turn_info(self) -> dict[str, Any]:
        """What the template puts after an assistant reply (``end_text``), the stop token ids for ``generate``
        and whether an eos must be appended after the last assistant turn."""
        if self._turn_info is None:
            tok = self.tokenizer
            reply = "KASA_PROBE_REPLY"
            probe = [{"role": "user", "content": "KASA_PROBE_QUESTION"}, {"role": "assistant", "content": reply}]
            full = self.render(probe)
            end_text = full.rsplit(reply, 1)[-1] if reply in full else ""
            end_ids = self._ids(end_text) if end_text.strip() else []
            special = set(tok.all_special_ids) | {
                i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
            }
            stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
            stop += [i for i in end_ids[:1] if i in special and i not in stop]
            self._turn_info = {
                "end_text": end_text.strip(),
                "stop_ids": stop,
                "append_eos": tok.eos_token_id is not None and not any(i in stop for i in end_ids),
            }
        return self._turn_info

    def encode_chat(self, messages: list[dict[str, str]]) -> tuple[dict[str, list[int]] | None, str]:
        """Token ids of the conversation with labels on the assistant turns only; (None, reason) when skipped."""
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            return None, "no_assistant"
        messages = messages[: last + 1]  # later turns carry no target
        full = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise ChatTemplateError(
                    "the chat template renders a conversation prefix differently from the same part of the whole "
                    f"conversation (assistant turn {i}), so the assistant tokens cannot be located reliably; "
                    "give data.chat_template (e.g. 'chatml')"
                )
            spans.append((len(before), len(upto)))
        tok = self.tokenizer
        if tok.is_fast:
            enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            labels = [
                tid if any(a <= start < b for a, b in spans) else IGNORE_INDEX
                for tid, (start, _) in zip(ids, enc["offset_mapping"])
            ]
        else:  # no offsets: token prefixes, checked
            ids = self._ids(full)
            labels = [IGNORE_INDEX] * len(ids)
            for a, b in spans:
                pa, pb = self._ids(full[:a]), self._ids(full[:b])
                if ids[: len(pb)] != pb or pb[: len(pa)] != pa:
                    raise ChatTemplateError("the tokenizer merges tokens across a turn boundary; use a fast tokenizer")
                labels[len(pa) : len(pb)] = pb[len(pa) :]
        if self.turn_info["append_eos"]:
            ids.append(tok.eos_token_id)
            labels.append(tok.eos_token_id)
        status = "ok"
        if len(ids) > self.max_length:
            # the last assistant turn (plus eos): from the first labelled token after the last prompt token
            tail = (
                len(ids) - max(j for j, lab in enumerate(labels) if lab == IGNORE_INDEX) - 1
                if (IGNORE_INDEX in labels)
                else len(ids)
            )
            if self.overlength == "drop" or tail >= self.max_length:
                return None, "dropped"
            ids, labels = ids[-self.max_length :], labels[-self.max_length :]
            status = "truncated"
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, status

    def clean_output(self, text: str) -> str:
        """The reply without the template's end-of-turn text (when it is not a special token) and outer spaces."""
        end = self.turn_info["end_text"] if self._tokenizer is not None else ""
        if end:
            for marker in (end, self.tokenizer.decode(self._ids(end), skip_special_tokens=True).strip()):
                if marker and marker in text:
                    text = text[: text.index(marker)]
        return text.strip()
