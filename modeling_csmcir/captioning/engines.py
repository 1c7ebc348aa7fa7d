"""Generation engines the captioning runner sends its chats to.

The runner (:func:`.runner.generate_mcot_captions`) needs one thing from a model: answers for a batch of MCoT chats.
:class:`CaptionEngine` is that interface; two implementations ship:

* :class:`PipelineEngine` — transformers' ``pipeline("image-text-to-text")`` (the default; any Hub VLM with a chat
  template; what :func:`.vlm.load_captioning_pipeline` builds). A bare pipeline passed to the runner is wrapped in it.
* :class:`VLLMEngine` — vLLM's offline batched inference (``vllm.LLM.generate``), for throughput on GPUs. vLLM is
  optional and imported only when this engine is built; the chat is rendered to a prompt by the model's own HF
  processor (``apply_chat_template``), and each image goes in as ``multi_modal_data={"image": image}``, the input
  form vLLM documents for offline multimodal generation. Greedy by default, as the pipeline engine.

Anything with ``processor`` (or ``None``), ``describe()`` and ``generate_answers(chats, max_new_tokens=...,
generate_kwargs=...)`` works (the tests use a fake engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .vlm import _read_chat_template, check_captioning_processor


@runtime_checkable
class CaptionEngine(Protocol):
    """Answers MCoT chats: ``generate_answers(chats)[i]`` is the model's answer text to ``chats[i]``.

    Attributes:
        processor: the HF processor (used to count generated tokens; ``None`` when the engine has none).
    """

    processor: Any

    def describe(self) -> str:
        """A short name for logs and errors."""
        ...

    def check(self) -> None:
        """Raise a ``ValueError`` before any work when the engine cannot caption images."""
        ...

    def generate_answers(
        self, chats: Sequence[list[dict[str, Any]]], *, max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> list[str]:
        """One answer per chat, in order."""
        ...


def _generated_text(output: Any) -> str:
    """The answer text from one pipeline output (a list with one dict, or the dict)."""
    if isinstance(output, list):
        output = output[0]
    text = output["generated_text"]
    if isinstance(text, list):  # a chat came back (return_full_text=True): take the assistant's last turn
        content = text[-1]["content"]
        text = content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    return text


class PipelineEngine:
    """A transformers ``image-text-to-text`` pipeline as a :class:`CaptionEngine` (one call per batch)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.processor = getattr(pipe, "processor", None)

    def describe(self) -> str:
        return type(getattr(self.pipe, "model", self.pipe)).__name__

    def check(self) -> None:
        check_captioning_processor(self.processor, self.describe())

    def generate_answers(
        self, chats: Sequence[list[dict[str, Any]]], *, max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> list[str]:
        outputs = self.pipe(
            list(chats),
            batch_size=len(chats),
            max_new_tokens=max_new_tokens,
            return_full_text=False,
            generate_kwargs=generate_kwargs,
        )
        return [_generated_text(output) for output in outputs]


def _vllm_sampling(vllm: Any, max_new_tokens: int, generate_kwargs: dict[str, Any]) -> Any:
    """``SamplingParams`` equal to the pipeline's decoding: greedy (temperature 0) unless ``do_sample``."""
    kwargs = dict(generate_kwargs)
    do_sample = bool(kwargs.pop("do_sample", False))
    params: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": float(kwargs.pop("temperature", 1.0))
                              if do_sample else 0.0}
    for hf_name, vllm_name in (("top_p", "top_p"), ("top_k", "top_k"), ("repetition_penalty", "repetition_penalty"),
                               ("seed", "seed")):
        if hf_name in kwargs:
            params[vllm_name] = kwargs.pop(hf_name)
    return vllm.SamplingParams(**params)


class VLLMEngine:
    """vLLM offline batched generation as a :class:`CaptionEngine` (needs ``pip install vllm`` and, in practice, a GPU).

    Args:
        model_name_or_path: a Hub id or folder vLLM supports as a multimodal model (Qwen2-VL, LLaVA, ...).
        chat_template: a Jinja string or file, for a processor that ships none.
        trust_remote_code, dtype: passed to ``vllm.LLM`` (and the processor).
        llm_kwargs: any other ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ...).

    Raises:
        ValueError: vLLM is not installed, or the model's processor cannot take images / has no chat template.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        chat_template: str | None = None,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as error:
            raise ValueError(
                f"--engine vllm needs vLLM, which is not installed here ({error}); `pip install vllm` on a machine "
                "with a GPU, or use the default --engine transformers"
            ) from None
        from transformers import AutoProcessor

        self._vllm = vllm
        self.model_name_or_path = model_name_or_path
        self.processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        if chat_template is not None:
            self.processor.chat_template = _read_chat_template(chat_template)
        self.check()
        self.llm = vllm.LLM(
            model=model_name_or_path,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            limit_mm_per_prompt={"image": 1},
            **(llm_kwargs or {}),
        )

    def describe(self) -> str:
        return f"vLLM {self.model_name_or_path!r}"

    def check(self) -> None:
        check_captioning_processor(self.processor, self.describe())

    def prompt_for(self, chat: list[dict[str, Any]]) -> dict[str, Any]:
        """vLLM's input for one chat: the template-rendered prompt and its image as ``multi_modal_data``."""
        images = [part["image"] for turn in chat if isinstance(turn.get("content"), list)
                  for part in turn["content"] if part.get("type") == "image"]
        if len(images) != 1:
            raise ValueError(f"an MCoT chat holds exactly one image (got {len(images)})")
        # The template sees an image placeholder, not the PIL object (which vLLM receives separately).
        placeholder_chat = [
            {**turn, "content": [{"type": "image"} if part.get("type") == "image" else part for part in turn["content"]]}
            if isinstance(turn.get("content"), list) else turn
            for turn in chat
        ]
        prompt = self.processor.apply_chat_template(placeholder_chat, add_generation_prompt=True, tokenize=False)
        return {"prompt": prompt, "multi_modal_data": {"image": images[0]}}

    def generate_answers(
        self, chats: Sequence[list[dict[str, Any]]], *, max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> list[str]:
        outputs = self.llm.generate(
            [self.prompt_for(chat) for chat in chats],
            sampling_params=_vllm_sampling(self._vllm, max_new_tokens, generate_kwargs),
            use_tqdm=False,
        )
        return [output.outputs[0].text for output in outputs]


def as_caption_engine(pipe_or_engine: Any) -> CaptionEngine:
    """An engine as is; anything else (a transformers pipeline) wrapped in :class:`PipelineEngine`."""
    if isinstance(pipe_or_engine, CaptionEngine):
        return pipe_or_engine
    return PipelineEngine(pipe_or_engine)


__all__ = ["CaptionEngine", "PipelineEngine", "VLLMEngine", "as_caption_engine"]
