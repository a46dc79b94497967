"""Where a backbone's weights come from: the Hugging Face cache, the Hub, or a local file, and what to say when
they cannot be had (offline, a file that is not a checkpoint) before open_clip spends a minute retrying.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip

from ..core import CompalignError


class BackboneError(CompalignError, RuntimeError):
    """Raised when a backbone cannot be loaded; the message says how to fix it."""


def raised_reading_checkpoint(e: BaseException) -> bool:
    """True when e came out of open_clip reading the file (factory.load_state_dict), not from later code.

    Any exception type can mean a bad file there (UnpicklingError, SafetensorError, EOFError, KeyError,
    StopIteration...), so the place decides, and a state dict that does not fit the model still surfaces.
    """
    reader = getattr(getattr(open_clip.factory, "load_state_dict", None), "__code__", None)
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is reader:
            return True
        tb = tb.tb_next
    return False


_WEIGHTS_BIN, _WEIGHTS_SAFE = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"  # open_clip.constants


def hub_files(model_name: str, tag: str | None) -> list[tuple[str, list[str]]]:
    """(repo, any-of filenames) the load would fetch from the Hub: the tag's weights, a HF tokenizer."""
    out: list[tuple[str, list[str]]] = []
    if model_name.startswith("hf-hub:"):
        out.append((model_name.removeprefix("hf-hub:"), ["open_clip_config.json"]))
    hub = (open_clip.get_pretrained_cfg(model_name, tag) if tag else {}).get("hf_hub")
    if hub:
        repo, filename = os.path.split(hub)  # 'org/repo/' = the default filename, as in open_clip
        filename = filename or _WEIGHTS_BIN
        names = [_WEIGHTS_SAFE] if filename == _WEIGHTS_BIN else []
        if filename.endswith((".bin", ".pth")):
            names.append(str(Path(filename).with_suffix(".safetensors")))
        out.append((repo, [*names, filename]))
    tok = hf_tokenizer(model_name)
    if tok:
        out.append((tok, ["tokenizer_config.json"]))
    return out


def hf_tokenizer(model_name: str) -> str | None:
    return ((open_clip.get_model_config(model_name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")


def fail_fast_offline(model_name: str, tag: str | None) -> None:
    """Refuse at once when Hub files are missing from the cache and the Hub is unreachable.

    Otherwise huggingface_hub retries for about a minute and logs ~100 lines before the same failure.
    A url-only tag (no hf_hub entry) is left to open_clip: it caches elsewhere (~/.cache/clip).
    """
    from huggingface_hub import try_to_load_from_cache

    missing = [repo for repo, names in hub_files(model_name, tag)
               if not any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)]
    if not missing:
        return
    reason = hub_unreachable()
    if reason:
        raise offline_error(model_name, tag, reason)


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, or None when it may be (then the normal download runs)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connect proves nothing: let huggingface_hub try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return f"no connection to {host}:{port}: {type(e).__name__}"
    return None


def offline_error(model_name: str, tag: str | None, reason: str) -> BackboneError:
    need_hf = hf_tokenizer(model_name) is not None and not importable("transformers")
    return BackboneError(
        f"could not load {model_name} / {tag!r}: the weights or tokenizer are not in the local cache "
        f"and the Hub cannot be reached ({reason}).\n"
        + ("Its tokenizer also needs transformers: `pip install 'compalign[hf]'`.\n" if need_hf else "")
        + f"Prefetch on a connected machine: {prefetch_hint(model_name, tag)}\n"
        "then copy ~/.cache/huggingface here and run with HF_HUB_OFFLINE=1."
    )


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules holds None for it: importing it fails
        return False


def prefetch_hint(model_name: str, tag: str | None) -> str:
    """The exact `huggingface-cli download` commands for a model's weights and tokenizer."""
    hub_tag = tag if tag and not os.path.isfile(tag) else None
    repos = list(dict.fromkeys(repo for repo, _ in hub_files(model_name, hub_tag)))
    if not repos:
        return (f"python -c \"import open_clip; open_clip.create_model_and_transforms('{model_name}', "
                f"pretrained='{tag}')\"")
    return " ; ".join(f"huggingface-cli download {r}" for r in repos)


def looks_offline(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    hints = ("connect", "offline", "resolve", "network", "hub", "not found", "localentrynotfound", "timed out")
    return any(s in text for s in hints)
