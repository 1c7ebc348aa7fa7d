"""`pipeline("composed-image-retrieval")`: reference image + modification text → ranked gallery images.

The task does not exist in transformers; this file defines it for CSMCIR (any model exposing
`get_query_features(pixel_values, input_ids, attention_mask)` and
`get_target_features(pixel_values, input_ids=None, attention_mask=None)`, both returning L2-normalised `(B, D)`).

    retriever = pipeline("composed-image-retrieval", model="path/or/repo", trust_remote_code=True)
    gallery = retriever.build_index(images, captions=captions)          # -> GalleryIndex (save / load)
    retriever(image, text="make it red and sleeveless", gallery=gallery, top_k=10)
    # -> [{"id": ..., "score": ..., **metadata}, ...]   (a list of such lists for a batch of queries)

Ranking is by cosine similarity between the query embedding q and each gallery embedding g (`GalleryIndex`).
A saved pipeline folder (`pipe.save_pretrained(dir)`) holds the model, the processor, this file and its sibling
`gallery_index.py`, and reloads with `pipeline(model=dir, trust_remote_code=True)` in a process that has only
transformers installed. Hub rule: this file imports torch, numpy, PIL, transformers and `.gallery_index` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers import image_utils
from transformers.image_utils import load_image
from transformers.utils import logging

from .gallery_index import GalleryIndex, SearchResult, encode_targets, model_identity


logger = logging.get_logger(__name__)

TASK = "composed-image-retrieval"
DEFAULT_TOP_K = 10


def _describe_source(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        return repr(text if len(text) <= 120 else text[:117] + "...")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} of shape {tuple(image.shape)}"
    return type(image).__name__


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """HWC or CHW, uint8 in [0, 255] or float in [0, 1] (floats above 1 are taken as [0, 255]), 1/3/4 channels."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: expected an image array HxW, HxWxC or CxHxW with C in 1/3/4, got shape {array.shape}")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: image arrays must be uint8 in [0, 255] or float in [0, 1]; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            # A uint16 (or int32) image clipped to [0, 255] would come out all white: refuse rather than guess a scale.
            raise ValueError(
                f"{name}: a {array.dtype} image array with values in [{low}, {high}]; expected uint8 in [0, 255] or "
                f"float in [0, 1] (for 16-bit images, pass (array / 257).astype(numpy.uint8))"
            )
        array = array.astype(np.uint8)
    elif array.dtype != np.uint8:
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: the image array holds NaN or infinite values")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 255.0:
            raise ValueError(
                f"{name}: a float image array with values in [{low:g}, {high:g}]; expected [0, 1] (or [0, 255]), "
                "not normalised pixel values"
            )
        if high <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


#: Seconds a URL image may take when the caller gives no `timeout` (a server that never answers must not hang).
DEFAULT_URL_TIMEOUT = 10.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _fetch_url_image(url: str, name: str, timeout: float | None) -> Image.Image:
    """GET `url` with a timeout; an HTTP error status or a timeout is a ValueError naming `name`, the URL and it."""
    # httpx is what transformers' own `load_image` fetches with; reached through it, the Hub folder needs nothing more.
    httpx = image_utils.httpx
    timeout = DEFAULT_URL_TIMEOUT if timeout is None else timeout
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.TimeoutException:
        raise ValueError(f"{name}: no answer from {url!r} within {timeout:g} s (pass timeout=... to wait longer)") from None
    except httpx.HTTPError as error:
        raise ValueError(f"{name}: cannot fetch {url!r} ({type(error).__name__}: {error})") from None
    if response.status_code >= 400:
        raise ValueError(f"{name}: fetching {url!r} returned HTTP {response.status_code} {response.reason_phrase}")
    try:
        return Image.open(image_utils.BytesIO(response.content))
    except Exception as error:  # noqa: BLE001 - PIL's UnidentifiedImageError and friends
        kind = response.headers.get("content-type", "unknown content type")
        raise ValueError(
            f"{name}: {url!r} answered HTTP {response.status_code} with {len(response.content)} bytes of {kind}, "
            f"not an image ({type(error).__name__})"
        ) from None


def _looks_like_a_path(text: str) -> bool:
    return len(text) < 4096 and (
        text.lower().endswith(_IMAGE_SUFFIXES) or text.startswith(("/", "./", "../", "~")) or os.sep + "." in text
    )


def _load_image_string(text: str, name: str, timeout: float | None) -> Image.Image:
    if text.startswith(("http://", "https://")):
        return _fetch_url_image(text, name, timeout)
    if os.path.isfile(text):
        if os.path.getsize(text) == 0:
            raise ValueError(f"{name}: cannot read image {_describe_source(text)}: the file is empty (0 bytes)")
        return Image.open(text)
    if os.path.isdir(text):
        raise ValueError(f"{name}: cannot read image {_describe_source(text)}: a folder, not an image file")
    if _looks_like_a_path(text):
        raise ValueError(f"{name}: cannot read image {_describe_source(text)}: no such file")
    try:
        return load_image(text, timeout=timeout)  # base64 (or a data: URL)
    except ValueError:
        raise ValueError(
            f"{name}: cannot read image {_describe_source(text)}: not an existing file, an http(s) URL or base64 "
            "image data"
        ) from None


def load_retrieval_image(image: Any, name: str, timeout: float | None = None) -> Image.Image:
    """A PIL image from a PIL image, a local path, an http(s) URL, a base64 string or a numpy array / tensor.

    Decoding is forced here (PIL opens lazily), so a corrupt, empty, truncated or oversized (decompression bomb)
    file fails with a ValueError that names `name` (e.g. `"query 3"` or `"images[12] (id 'shoe-12')"`) and the
    source, not deep inside the processor. A URL is fetched with `timeout` seconds (default 10) and an HTTP error
    status is reported as such; a missing local file is reported as missing, not as bad base64.
    """
    source = image  # named in errors: once opened, a path is a PIL object that no longer says where it came from
    try:
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if isinstance(image, str):
            image = _load_image_string(image, name, timeout)
        elif isinstance(image, torch.Tensor):
            image = _array_to_pil(image.detach().cpu().numpy(), name)
        elif isinstance(image, np.ndarray):
            image = _array_to_pil(image, name)
        elif not isinstance(image, Image.Image):
            raise ValueError(
                f"{name}: expected a PIL.Image, a path, a URL, a base64 string or an array, got {type(image).__name__}"
            )
        image.load()
    except ValueError as error:
        if str(error).startswith(name):
            raise
        raise ValueError(f"{name}: cannot read image {_describe_source(source)}: {error}") from error
    except Exception as error:  # PIL raises OSError / UnidentifiedImageError / SyntaxError / DecompressionBombError
        raise ValueError(
            f"{name}: cannot read image {_describe_source(source)}: {type(error).__name__}: {error}"
        ) from error
    return image


def _check_text(text: Any, name: str) -> str:
    if text is None:
        raise ValueError(f"{name}: the modification text is missing (pass text=... with one string per image)")
    if not isinstance(text, str):
        raise ValueError(f"{name}: the modification text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name}: the modification text is empty")
    return text


def _is_dataset(value: Any) -> bool:
    """A `datasets.Dataset`, recognised by duck typing: `datasets` is not a dependency of the Hub folder."""
    return hasattr(value, "column_names") and hasattr(value, "features") and hasattr(value, "__getitem__")


class ComposedImageRetrievalPipeline(Pipeline):
    """Composed image retrieval: rank a gallery for (reference image, modification text) queries.

    Call forms:
        `pipe(image, text="...", gallery=index)` → one ranked list of hits;
        `pipe([image, ...], text=["...", ...], gallery=index)` → one list per query;
        `pipe({"image": ..., "text": ...})` / `pipe([{"image": ..., "text": ...}, ...])` → the same.
    Images may be PIL images, local paths, http(s) URLs, base64 strings or numpy arrays / tensors (HWC or CHW).

    Call parameters:
        gallery: a `GalleryIndex` (see `build_index`) or the folder of a saved one (loaded once, then cached). May
            also be given when the pipeline is created.
        top_k (`int`, default 10): hits per query. **Clamped to the gallery size**: asking for more than the
            gallery holds returns every item, ranked.
        check_model (`bool`, default True): refuse a gallery built by a different model (config hash or weights
            fingerprint differ). A different embedding size is always refused.
        timeout: seconds for fetching URL images.
        batch_size: queries encoded per forward pass (results do not depend on it).

    Each hit is `{"id": gallery id, "score": cosine similarity, **the item's metadata}`, best first.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # _sanitize_parameters runs inside Pipeline.__init__ and may already load a gallery folder.
        self._gallery_cache: dict[str, Any] = {}
        self._model_identity: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)
        # A model handed over from training may still be in train mode, where dropout would randomise embeddings.
        self.model.eval()
        if self.processor is None:
            raise ValueError(
                f"The {TASK} pipeline needs a processor (image processor + tokenizer), e.g. CSMCIRProcessor; "
                "none was given or found next to the model"
            )
        for method in ("get_query_features", "get_target_features"):
            if not callable(getattr(self.model, method, None)):
                raise ValueError(f"The {TASK} pipeline needs a model with `{method}`; {type(self.model).__name__} has none")

    # ------------------------------------------------------------------------------------------------------ identity

    def model_identity(self, refresh: bool = False) -> dict[str, Any]:
        """The identity recorded in indexes this pipeline builds and checked against the ones it searches.

        Computed once; pass `refresh=True` after changing the model's weights in place.
        """
        if self._model_identity is None or refresh:
            self._model_identity = model_identity(self.model)
        return self._model_identity

    # ------------------------------------------------------------------------------------------------------ calling

    def __call__(self, inputs: Any = None, text: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """See the class docstring. Returns a list of hits for one query, a list of such lists for several."""
        if inputs is None:
            inputs = kwargs.pop("images", kwargs.pop("image", None))
        if inputs is None:
            raise ValueError(f"{TASK}: no reference image given")
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError(f"{TASK}: the list of queries is empty")
        if text is not None:
            if not isinstance(text, (str, list, tuple)):
                raise ValueError(
                    f"query 0: the modification text must be a string (or a list of strings), got {type(text).__name__}"
                )
            texts = [text] if isinstance(text, str) else list(text)
            if len(texts) != len(items):
                raise ValueError(f"{TASK}: got {len(items)} reference images but {len(texts)} modification texts")
        else:
            texts = [None] * len(items)
        queries = []
        for position, (item, item_text) in enumerate(zip(items, texts)):
            if isinstance(item, dict):
                unknown = set(item) - {"image", "text"}
                if unknown or "image" not in item:
                    raise ValueError(f"query {position}: expected a dict with keys 'image' and 'text', got {sorted(item)}")
                if item_text is not None and item.get("text") is not None:
                    raise ValueError(f"query {position}: text given both in the dict and as text=")
                item, item_text = item["image"], item.get("text", item_text)
            queries.append({"image": item, "text": _check_text(item_text, f"query {position}"), "position": position})
        results = super().__call__(queries, **kwargs)
        return results[0] if single else results

    def _resolve_gallery(self, gallery: Any) -> Any:
        if isinstance(gallery, (str, os.PathLike)):
            key = os.path.abspath(os.fspath(gallery))
            if key not in self._gallery_cache:
                self._gallery_cache[key] = GalleryIndex.load(key)
            gallery = self._gallery_cache[key]
        elif not (callable(getattr(gallery, "search", None)) and callable(getattr(gallery, "hits", None))):
            raise ValueError(
                f"gallery: expected a GalleryIndex or the folder of a saved one, got {type(gallery).__name__}"
            )
        return gallery

    def _sanitize_parameters(
        self,
        gallery: Any = None,
        top_k: int | None = None,
        check_model: bool | None = None,
        timeout: float | None = None,
        **unused: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unused:
            raise ValueError(f"{TASK}: unexpected arguments {sorted(unused)}")
        preprocess_params: dict[str, Any] = {}
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"{TASK}: top_k must be a positive int, got {top_k!r}")
            forward_params["top_k"] = top_k
        if gallery is not None:
            gallery = self._resolve_gallery(gallery)
            gallery.check_compatible(self.model_identity(), check_model=True if check_model is None else check_model)
            forward_params["gallery"] = gallery
            postprocess_params["gallery"] = gallery
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, query: dict[str, Any], timeout: float | None = None) -> dict[str, torch.Tensor]:
        name = f"query {query['position']}"
        image = load_retrieval_image(query["image"], name, timeout=timeout)
        encoding = self.processor(images=image, text=query["text"], return_tensors="pt")
        return {key: encoding[key] for key in ("pixel_values", "input_ids", "attention_mask")}

    def _forward(self, model_inputs: dict[str, torch.Tensor], gallery: Any = None, top_k: int = DEFAULT_TOP_K) -> dict:
        if gallery is None:
            raise ValueError(
                f"{TASK}: no gallery to search; pass gallery=<GalleryIndex or saved index folder> "
                "(build one with pipe.build_index(images, captions=...))"
            )
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        query_embeds = self.model.get_query_features(
            pixel_values=pixel_values,
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
        )
        result = gallery.search(query_embeds.float(), top_k=top_k)
        return {"scores": result.scores, "positions": result.positions}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], gallery: Any = None) -> list[dict[str, Any]]:
        result = SearchResult(scores=model_outputs["scores"], positions=model_outputs["positions"])
        return gallery.hits(result)[0]

    # ------------------------------------------------------------------------------------------------------ gallery

    def build_index(
        self,
        images: Any,
        captions: Sequence[str] | str | None = None,
        ids: Sequence[str | int] | str | None = None,
        metadata: Sequence[dict[str, Any]] | Sequence[str] | str | None = None,
        batch_size: int = 32,
        image_column: str = "image",
        dtype: str = "float32",
        timeout: float | None = None,
        show_progress: bool = True,
    ) -> GalleryIndex:
        """Encode gallery images with the model's target tower into a `GalleryIndex`.

        With captions, each target is `get_target_features(image, caption)` — exactly the query computation, the
        symmetric tower; without, the image-only target embedding. A gallery is encoded one way throughout. A model
        with `config.target_representation="tokens"` gives a token-level `(N, K, D)` index, ranked by the maximum
        over each item's tokens (`CSMCIRModel.score`).

        Args:
            images: a list of images (PIL / path / URL / base64 / array), or a `datasets.Dataset`. For a dataset,
                `image_column` names the image column and `captions` / `ids` may be column names (str), `metadata`
                a column name or a list of them; the dataset is read one batch at a time.
            captions: one caption per image, or None for image-only targets.
            ids: one unique id (str or int) per image; default `0..N-1`.
            metadata: one JSON-serialisable dict per image, returned with its hits.
            batch_size: images per forward pass.
            dtype: storage dtype of the index (`"float32"`, `"float16"`, `"bfloat16"`).

        Raises:
            ValueError: an empty gallery, mismatched lengths, a missing/empty caption, or an image that cannot be
                read (the message names its position and id).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"build_index batch_size: expected a positive int, got {batch_size!r}")
        if _is_dataset(images):
            dataset = images
            columns = list(dataset.column_names)

            def column(name: str, field: str) -> list[Any]:
                if name not in columns:
                    raise ValueError(f"build_index {field}: column {name!r} not in the dataset (columns: {columns})")
                return list(dataset[name])

            if image_column not in columns:
                raise ValueError(f"build_index image_column: column {image_column!r} not in the dataset (columns: {columns})")
            num_items = len(dataset)
            captions = column(captions, "captions") if isinstance(captions, str) else captions
            ids = column(ids, "ids") if isinstance(ids, str) else ids
            if isinstance(metadata, str):
                metadata = [metadata]
            if metadata is not None and all(isinstance(name, str) for name in metadata):
                values = {name: column(name, "metadata") for name in metadata}
                metadata = [{name: values[name][row] for name in values} for row in range(num_items)]

            def image_batch(start: int, stop: int) -> list[Any]:
                # Slicing one batch decodes only that batch's images.
                return list(dataset[start:stop][image_column])
        else:
            if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
                raise ValueError("build_index images: expected a list of images or a datasets.Dataset, got a single image")
            images = list(images)
            num_items = len(images)

            def image_batch(start: int, stop: int) -> list[Any]:
                return images[start:stop]

        if num_items == 0:
            raise ValueError("build_index: the gallery is empty (0 images); an index needs at least one item")
        ids = list(range(num_items)) if ids is None else list(ids)
        for field, values in (("captions", captions), ("ids", ids), ("metadata", metadata)):
            if values is not None and len(values) != num_items:
                raise ValueError(f"build_index {field}: expected {num_items} entries (one per image), got {len(values)}")
        if captions is not None:
            captions = list(captions)
            for position, caption in enumerate(captions):
                _check_text(caption, f"captions[{position}] (id {ids[position]!r})")

        def encoded_batches():
            for start in range(0, num_items, batch_size):
                stop = min(start + batch_size, num_items)
                batch = [
                    load_retrieval_image(image, f"images[{start + offset}] (id {ids[start + offset]!r})", timeout)
                    for offset, image in enumerate(image_batch(start, stop))
                ]
                yield self.processor(
                    images=batch, text=None if captions is None else captions[start:stop], return_tensors="pt"
                )

        embeddings = encode_targets(self.model, encoded_batches(), total=num_items, show_progress=show_progress)
        identity = dict(self.model_identity(), embed_dim=int(embeddings.shape[-1]))  # (N, D) or (N, K, D)
        identity["target_inputs"] = "image" if captions is None else "image+caption"
        return GalleryIndex(embeddings, ids=ids, metadata=metadata, model_identity=identity, dtype=dtype)

    @staticmethod
    def load_index(path: str | os.PathLike, device: str | torch.device = "cpu") -> GalleryIndex:
        """Load a saved `GalleryIndex` (also available where only the saved pipeline folder's code is importable)."""
        return GalleryIndex.load(path, device=device)

    # ------------------------------------------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save model, processor and pipeline code; `Pipeline.save_pretrained` alone skips the processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)
