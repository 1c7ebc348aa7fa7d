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
import torch.nn.functional as F
from PIL import Image
from transformers import Pipeline
from transformers import image_utils
from transformers.image_utils import load_image
from transformers.utils import logging

from .gallery_index import GalleryIndex, SearchResult, encode_targets, model_identity
from .hub_code import save_pipeline_code


logger = logging.get_logger(__name__)

TASK = "composed-image-retrieval"
DEFAULT_TOP_K = 10
#: What a query is made of: reference image + modification text (the task), words alone, or a picture alone.
QUERY_TYPES = ("composed", "text", "image")


def text_query_features(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Text-only query embeddings `(B, D)`: what a user searching the gallery by words alone is scored with.

    `q_text = normalize(W_text · QFormer(embed(text))[CLS])` — the Q-Former's text-only pass (no query tokens, no
    image: self-attention over the words, the text feed-forward branch), its [CLS] state projected by the same
    `text_projection` the composed query uses. This is BLIP-2's image-text-contrastive text embedding; the composed
    query `q = normalize(W_text · QFormer([query_tokens; embed(text)], ViT(reference))[CLS_text])` is the same
    computation with the reference image's query tokens attended to, so `q_text` is the composed query with the
    reference image taken away. A model exposing `get_text_features(input_ids, attention_mask)` is used as is.
    """
    if callable(getattr(model, "get_text_features", None)):
        return F.normalize(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).float(), dim=-1)
    parameter = next(model.parameters())
    input_ids = input_ids.to(parameter.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(parameter.device)
    embeddings = model.embeddings(input_ids=input_ids)
    outputs = model.qformer(query_embeds=embeddings, query_length=0, attention_mask=attention_mask, return_dict=True)
    text_cls = outputs.last_hidden_state[:, 0, :].to(model.text_projection.weight.dtype)
    return F.normalize(model.text_projection(text_cls).float(), dim=-1)


def image_query_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    r"""Image-only query embeddings `(B, D)`: a picture searched for look-alikes (image → image).

    `q_image = t(image) = model.get_target_features(pixel_values)` — the query image encoded exactly as an
    image-only gallery target is, so an image in the gallery scores `q_image · t = 1` against itself and ranks
    first. For a token-level model (`target_representation="tokens"`, targets `(K, D)`) the query is the
    normalised mean of the image's K target tokens, scored against each gallery item by the maximum over its tokens.
    Against a gallery encoded with captions (targets = image + caption) the query has no caption: scores then
    compare an image-only embedding with captioned ones (build the gallery without captions to search by picture).
    """
    return F.normalize(model.get_target_features(pixel_values=pixel_values).float(), dim=-1)


def search_token_queries(gallery: GalleryIndex, query_tokens: torch.Tensor, top_k: int) -> SearchResult:
    """Top-k items for multi-vector queries `(B, J, D)`: an item's score is `max_j score(q_j, item)`.

    Exact: each query token is searched on its own (top-k), and the overall top-k is the top-k of the per-item
    maximum over those hits — an item in the overall top-k with its best score at token j is in token j's top-k,
    since an item beating it for j would beat it overall.
    """
    batch, tokens, _ = query_tokens.shape
    top_k = min(int(top_k), len(gallery))
    flat = gallery.search(query_tokens.reshape(batch * tokens, -1), top_k=top_k)
    scores = flat.scores.view(batch, tokens * top_k)
    positions = flat.positions.view(batch, tokens * top_k)
    best_scores, best_positions = [], []
    for row in range(batch):
        best: dict[int, float] = {}
        for score, position in zip(scores[row].tolist(), positions[row].tolist()):
            if position >= 0 and score > best.get(position, float("-inf")):
                best[position] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        ranked += [(-1, float("-inf"))] * (top_k - len(ranked))
        best_positions.append([position for position, _ in ranked])
        best_scores.append([score for _, score in ranked])
    return SearchResult(scores=torch.tensor(best_scores, dtype=torch.float32),
                        positions=torch.tensor(best_positions, dtype=torch.int64))


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
        if isinstance(image, dict):
            image = _undecoded_image(image, name)
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


def _undecoded_image(value: dict, name: str) -> Any:
    """A `datasets` `Image(decode=False)` value `{"bytes": ..., "path": ...}`: its bytes if any, else its path."""
    unknown = set(value) - {"bytes", "path"}
    if unknown:
        raise ValueError(f"{name}: an image dict has keys {sorted(value)}; expected 'bytes' and/or 'path' (a datasets "
                         "Image(decode=False) value)")
    if value.get("bytes"):
        return Image.open(image_utils.BytesIO(value["bytes"]))
    if value.get("path"):
        return os.fspath(value["path"])
    raise ValueError(f"{name}: an image dict with neither 'bytes' nor 'path'")


def image_file_name(image: Any) -> str | None:
    """The file name of an image given by path (or a `datasets` `{"path": ...}` dict), else None: the default id."""
    if isinstance(image, dict):
        image = image.get("path")
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str) and not image.startswith(("http://", "https://", "data:")) and _looks_like_a_path(image):
        return os.path.basename(image) or None
    return None


def _check_text(text: Any, name: str) -> str:
    if text is None:
        raise ValueError(f"{name}: the modification text is missing (pass text=... with one string per image)")
    if not isinstance(text, str):
        raise ValueError(f"{name}: the modification text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name}: the modification text is empty")
    return text


def _as_query_list(value: Any) -> Any:
    """Queries given as a `KeyDataset` / torch map-style dataset, a `datasets` column or a generator, as a list;
    anything else (one image, one string, a list) unchanged."""
    if value is None or isinstance(value, (str, bytes, os.PathLike, dict, list, tuple, Image.Image, np.ndarray, torch.Tensor)):
        return value
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):  # KeyDataset, torch Dataset, datasets Column
        return [value[position] for position in range(len(value))]
    if hasattr(value, "__iter__"):  # a generator, an IterableDataset column
        return list(value)
    return value


def _is_dataset(value: Any) -> bool:
    """A `datasets.Dataset`, recognised by duck typing: `datasets` is not a dependency of the Hub folder."""
    return hasattr(value, "column_names") and hasattr(value, "features") and hasattr(value, "__getitem__")


class ComposedImageRetrievalPipeline(Pipeline):
    """Composed image retrieval: rank a gallery for (reference image, modification text) queries.

    Call forms:
        `pipe(image, text="...", gallery=index)` → one ranked list of hits;
        `pipe([image, ...], text=["...", ...], gallery=index)` → one list per query;
        `pipe({"image": ..., "text": ...})` / `pipe([{"image": ..., "text": ...}, ...])` → the same;
        `pipe(text="a red dress", gallery=index, query_type="text")` → search by words alone (`text_query_features`:
        the Q-Former's text-only [CLS] embedding, i.e. the composed query without the reference image);
        `pipe(image, gallery=index, query_type="image")` → search by a picture alone (`image_query_features`: the
        image's own target-side embedding, image → image; an indexed image finds itself first, score 1).
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
        query_type (`str`, default `"composed"`): `"composed"` (reference image + modification text), `"text"`
            (text only, no image) or `"image"` (image only, no text).

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
        query_type = kwargs.get("query_type", "composed")
        if query_type not in QUERY_TYPES:
            raise ValueError(f"{TASK}: query_type must be one of {QUERY_TYPES}, got {query_type!r}")
        if inputs is None:
            inputs = kwargs.pop("images", kwargs.pop("image", None))
        text = _as_query_list(text)
        if inputs is None and query_type == "text":
            if text is None:
                raise ValueError(f"{TASK}: query_type='text' needs text=... (a string or a list of strings)")
            single = not isinstance(text, (list, tuple))
            items = [None] if single else [None] * len(text)
        elif inputs is None:
            raise ValueError(
                f"{TASK}: no reference image given (to search by words alone, pass query_type='text' and text=...)"
            )
        else:
            inputs = _as_query_list(inputs)
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
            if isinstance(item, dict) and item and set(item) <= {"bytes", "path"}:
                pass  # a datasets Image(decode=False) value: the image itself
            elif isinstance(item, dict):
                unknown = set(item) - {"image", "text"}
                if unknown or ("image" not in item and query_type != "text"):
                    raise ValueError(f"query {position}: expected a dict with keys 'image' and 'text', got {sorted(item)}")
                if item_text is not None and item.get("text") is not None:
                    raise ValueError(f"query {position}: text given both in the dict and as text=")
                item, item_text = item.get("image"), item.get("text", item_text)
            name = f"query {position}"
            if query_type == "image":
                if item_text is not None:
                    raise ValueError(f"{name}: query_type='image' searches by the picture alone; got a text too")
            else:
                item_text = _check_text(item_text, name)
            if query_type == "text" and item is not None:
                raise ValueError(f"{name}: query_type='text' searches by words alone; got an image too")
            queries.append({"image": item, "text": item_text, "position": position})
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
        query_type: str | None = None,
        **unused: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unused:
            raise ValueError(f"{TASK}: unexpected arguments {sorted(unused)}")
        preprocess_params: dict[str, Any] = {}
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if query_type is not None:
            if query_type not in QUERY_TYPES:
                raise ValueError(f"{TASK}: query_type must be one of {QUERY_TYPES}, got {query_type!r}")
            preprocess_params["query_type"] = forward_params["query_type"] = query_type
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

    def preprocess(
        self, query: dict[str, Any], timeout: float | None = None, query_type: str = "composed"
    ) -> dict[str, torch.Tensor]:
        name = f"query {query['position']}"
        image = None if query_type == "text" else load_retrieval_image(query["image"], name, timeout=timeout)
        encoding = self.processor(images=image, text=query["text"], return_tensors="pt")
        return {key: encoding[key] for key in ("pixel_values", "input_ids", "attention_mask") if key in encoding}

    def query_embeddings(self, model_inputs: dict[str, torch.Tensor], query_type: str = "composed") -> torch.Tensor:
        """`(B, D)` L2-normalised query embeddings of one kind (`(B, K, D)` target tokens for an image-only query of
        a token-level model); see `text_query_features` and `image_query_features` for the formulas."""
        if query_type == "text":
            return text_query_features(self.model, model_inputs["input_ids"], model_inputs.get("attention_mask"))
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        if query_type == "image":
            return image_query_features(self.model, pixel_values)
        return self.model.get_query_features(
            pixel_values=pixel_values,
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
        )

    def _forward(
        self, model_inputs: dict[str, torch.Tensor], gallery: Any = None, top_k: int = DEFAULT_TOP_K,
        query_type: str = "composed",
    ) -> dict:
        if gallery is None:
            raise ValueError(
                f"{TASK}: no gallery to search; pass gallery=<GalleryIndex or saved index folder> "
                "(build one with pipe.build_index(images, captions=...))"
            )
        query_embeds = self.query_embeddings(model_inputs, query_type)
        if query_embeds.dim() == 3:  # an image-only query of a token-level model: K target tokens
            result = search_token_queries(gallery, query_embeds.float(), top_k)
        else:
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
        total: int | None = None,
    ) -> GalleryIndex:
        """Encode gallery images with the model's target tower into a `GalleryIndex`.

        With captions, each target is `get_target_features(image, caption)` — exactly the query computation, the
        symmetric tower; without, the image-only target embedding. A gallery is encoded one way throughout. A model
        with `config.target_representation="tokens"` gives a token-level `(N, K, D)` index, ranked by the maximum
        over each item's tokens (`CSMCIRModel.score`).

        Args:
            images: the gallery, read one batch at a time (only one batch of images is decoded at once):
                a list of images (PIL / path / URL / base64 / array / `{"path", "bytes"}` dict);
                a `datasets.Dataset` or a streaming `datasets.IterableDataset` (`image_column` names the image
                column, which may be `Image()` or `Image(decode=False)`);
                any other iterable or generator, of images or of row dicts (read like dataset rows).
                With rows, `captions` / `ids` may be column names (str) and `metadata` a column name or a list of
                them.
            captions: one caption per image (a list, or a column name), or None for image-only targets.
            ids: one unique id (str or int) per image, or a column name. Default: the file names when every image
                is given by path (or a `{"path": ...}` dict) and they are unique, else `0..N-1`.
            metadata: one JSON-serialisable dict per image, returned with its hits.
            batch_size: images per forward pass.
            dtype: storage dtype of the index (`"float32"`, `"float16"`, `"bfloat16"`).
            total: the number of items, to size the progress bar of an iterable without a length.

        Raises:
            ValueError: an empty gallery, mismatched lengths, a missing column, a missing/empty caption, or an image
                that cannot be read (the message names its position and id).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"build_index batch_size: expected a positive int, got {batch_size!r}")
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor, dict)):
            raise ValueError(
                "build_index images: expected a list of images, a datasets.Dataset / IterableDataset or an iterable, "
                "got a single image"
            )
        if not hasattr(images, "__iter__") and not _is_dataset(images):
            raise ValueError(f"build_index images: expected a list, a dataset or an iterable, got {type(images).__name__}")
        metadata_columns = None
        if isinstance(metadata, str):
            metadata_columns = [metadata]
        elif metadata is not None and not isinstance(metadata, dict) and len(metadata) and all(
            isinstance(name, str) for name in metadata
        ):
            metadata_columns = list(metadata)
        columns = {"captions": captions if isinstance(captions, str) else None,
                   "ids": ids if isinstance(ids, str) else None}
        lists = {"captions": None if isinstance(captions, str) or captions is None else list(captions),
                 "ids": None if isinstance(ids, str) or ids is None else list(ids),
                 "metadata": None if metadata_columns is not None or metadata is None else list(metadata)}
        known_total = len(images) if hasattr(images, "__len__") else total
        if known_total is not None and hasattr(images, "__len__"):
            for field, values in lists.items():
                if values is not None and len(values) != known_total:
                    raise ValueError(
                        f"build_index {field}: expected {known_total} entries (one per image), got {len(values)}"
                    )

        seen: dict[str, list[Any]] = {"ids": [], "captions": [], "metadata": [], "names": []}

        if _is_dataset(images) and getattr(images, "column_names", None):
            available = list(images.column_names)
            named = [("image_column", image_column), ("captions", columns["captions"]), ("ids", columns["ids"])]
            named += [("metadata", name) for name in metadata_columns or []]
            for field, name in named:
                if name is not None and name not in available:
                    raise ValueError(f"build_index {field}: column {name!r} not in the dataset (columns: {available})")

        def dataset_rows():
            # Slicing one batch decodes only that batch's images.
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                for row in range(len(chunk[image_column])):
                    yield {name: values[row] for name, values in chunk.items()}

        def rows():
            """(image, caption, id, metadata) per item, in order, whatever the input kind."""
            if _is_dataset(images) and hasattr(images, "__len__"):
                source = dataset_rows()
            else:
                source = iter(images)
            for position, item in enumerate(source):
                row = item if isinstance(item, dict) and image_column in item else None
                if row is None and isinstance(item, dict) and (columns["captions"] or columns["ids"] or metadata_columns):
                    raise ValueError(
                        f"build_index: row {position} has no image column {image_column!r} (keys: {sorted(item)})"
                    )
                image = row[image_column] if row is not None else item

                def value(field: str) -> Any:
                    if columns.get(field) is not None:
                        if row is None:
                            raise ValueError(
                                f"build_index {field}: {columns[field]!r} names a column, but item {position} is an "
                                "image, not a row"
                            )
                        if columns[field] not in row:
                            raise ValueError(
                                f"build_index {field}: column {columns[field]!r} not in row {position} "
                                f"(columns: {sorted(row)})"
                            )
                        return row[columns[field]]
                    values = lists.get(field)
                    if values is None:
                        return None
                    if position >= len(values):
                        raise ValueError(
                            f"build_index {field}: {len(values)} entries, but the gallery has more images "
                            f"(image {position} has none)"
                        )
                    return values[position]

                meta = value("metadata")
                if metadata_columns is not None:
                    if row is None:
                        raise ValueError("build_index metadata: column names given, but the items are images, not rows")
                    missing = [name for name in metadata_columns if name not in row]
                    if missing:
                        raise ValueError(
                            f"build_index metadata: columns {missing} not in row {position} (columns: {sorted(row)})"
                        )
                    meta = {name: row[name] for name in metadata_columns}
                yield image, value("captions"), value("ids"), meta

        use_captions = captions is not None

        def encoded_batches():
            batch: list[tuple[Any, Any, Any, Any]] = []

            def encode(batch):
                start = len(seen["ids"]) - len(batch)
                loaded, texts = [], []
                for offset, (image, caption, item_id, _) in enumerate(batch):
                    name = f"images[{start + offset}] (id {item_id if item_id is not None else start + offset!r})"
                    if use_captions:
                        texts.append(_check_text(caption, f"captions[{start + offset}] (id "
                                                          f"{item_id if item_id is not None else start + offset!r})"))
                    loaded.append(load_retrieval_image(image, name, timeout))
                return self.processor(images=loaded, text=texts if use_captions else None, return_tensors="pt")

            for item in rows():
                seen["ids"].append(item[2])
                seen["metadata"].append(item[3])
                seen["names"].append(image_file_name(item[0]))
                batch.append(item)
                if len(batch) == batch_size:
                    yield encode(batch)
                    batch = []
            if batch:
                yield encode(batch)

        try:
            embeddings = encode_targets(self.model, encoded_batches(), total=known_total, show_progress=show_progress)
        except ValueError as error:
            if "the gallery is empty" in str(error):
                raise ValueError("build_index: the gallery is empty (0 images); an index needs at least one item") from None
            raise
        num_items = embeddings.shape[0]
        for field, values in lists.items():
            if values is not None and len(values) != num_items:
                raise ValueError(f"build_index {field}: expected {num_items} entries (one per image), got {len(values)}")
        item_ids = seen["ids"]
        if all(item is None for item in item_ids):
            names = seen["names"]
            item_ids = names if all(names) and len(set(names)) == num_items else list(range(num_items))
        metadata_rows = None if all(meta is None for meta in seen["metadata"]) else seen["metadata"]
        identity = dict(self.model_identity(), embed_dim=int(embeddings.shape[-1]))  # (N, D) or (N, K, D)
        identity["target_inputs"] = "image+caption" if use_captions else "image"
        return GalleryIndex(embeddings, ids=item_ids, metadata=metadata_rows, model_identity=identity, dtype=dtype)

    @staticmethod
    def load_index(path: str | os.PathLike, device: str | torch.device = "cpu", mmap: bool = False) -> GalleryIndex:
        """Load a saved `GalleryIndex` (also available where only the saved pipeline folder's code is importable).

        `mmap=True` maps its embeddings file instead of reading it (galleries larger than memory: exact search
        streams the file block by block; see `GalleryIndex.load`). Pass the result as `gallery=`.
        """
        return GalleryIndex.load(path, device=device, mmap=mmap)

    # ------------------------------------------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save model, processor and pipeline code (also when this pipeline was itself loaded from a Hub folder);
        `Pipeline.save_pretrained` alone skips the processor, and the code of an unregistered (remote-code) class."""
        save_pipeline_code(self, save_directory, TASK, ("AutoModel",), "multimodal")
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)
