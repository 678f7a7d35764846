"""An in-process transformers model as a teacher (or as the student, for evaluation)."""

from __future__ import annotations

from typing import Any

from distilforge.schemas.records import TeacherResponse
from distilforge.teachers.base import TeacherError
from distilforge.teachers.batched import BatchedTeacher
from distilforge.teachers.chat_response import completion_of


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class LocalTeacher(BatchedTeacher):
    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.7,
        top_p: float | None = None,
        max_tokens: int = 512,
        seed: int | None = None,
        batch_size: int = 8,
        device: str = "auto",
        adapter: str | None = None,
    ):
        super().__init__(model, batch_size)
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.seed = seed
        self.device = device
        self.adapter = adapter
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        """Load weights (blocking); eval calls it directly, outside any event loop."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from distilforge.models import resolve_model

        path = resolve_model(self.model)
        self.device = pick_device(self.device)
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if self.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()
        model.to(self.device).eval()
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            raise TeacherError(f"model '{self.model}' has no chat template; use an instruct/chat model")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        self._model, self._tokenizer = model, tokenizer

    def generate_batch(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[TeacherResponse]:
        """Blocking batched generation; one response (with n completions) per request."""
        import torch

        self.load()
        tok, model = self._tokenizer, self._model
        prompts = [
            tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages, n in requests
            for _ in range(n)
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = self.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        eos = tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        width = enc["input_ids"].shape[1]
        new = out[:, width:].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        responses, row = [], 0
        for _messages, n in requests:
            completions, p_tokens, c_tokens = [], 0, 0
            for _ in range(n):
                ids = new[row]
                # Generated ids stop at the first eos; the rest of the row is padding.
                end = ids.index(eos) if eos in ids else len(ids)
                finished = end < len(ids)
                text = tok.decode(ids[:end], skip_special_tokens=True)
                completions.append(completion_of({"content": text}, "stop" if finished else "length"))
                p_tokens += int(prompt_lens[row])
                c_tokens += end + (1 if finished else 0)
                row += 1
            responses.append(TeacherResponse(completions, p_tokens, c_tokens, self.model))
        return responses
