"""A light, picklable view of a fast tokenizer for preprocessing actors: only the ``tokenizers`` (Rust) backend,
serialised as JSON, plus the special-token ids the templates need. Unpickling it does not import transformers
(~2 s per process on a small machine), so Ray Data's preprocessing actors start sooner; encoding gives the same
ids as the transformers tokenizer it was made from (tests/unit/test_tokenizer.py checks parity)."""

from __future__ import annotations

from typing import Any


class TokenizerView:
    """The subset of a transformers tokenizer that conversation preprocessing calls."""

    def __init__(self, backend_json: str, special_ids: dict[str, int | None]) -> None:
        self._json = backend_json
        self._backend = None
        self.bos_token_id = special_ids.get("bos")
        self.eos_token_id = special_ids.get("eos")
        self.pad_token_id = special_ids.get("pad")
        self.unk_token_id = special_ids.get("unk")

    @property
    def backend(self):
        if self._backend is None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self._json)
        return self._backend

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_backend": None}


def tokenizer_view(tok: Any) -> Any:
    """A ``TokenizerView`` of a fast tokenizer; any other tokenizer object is returned as it is."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return tok
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id}
    return TokenizerView(backend.to_str(), ids)
