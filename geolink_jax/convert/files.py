"""Reading and writing PyTorch-world weight files without executing pickles.

safetensors needs nothing but numpy; `.pth`/`.pt`/`.bin` need torch (an optional extra) and are opened with
`torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

import json
import pathlib

import numpy as np


def _to_numpy(tensor):
    import torch

    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def load_weights(path):
    """A weight file → (state_dict {key: numpy array}, model_config dict or None).

    Accepts safetensors (model_config in its metadata, if any) and torch checkpoints: a bare state_dict or the
    official `{'model_config', 'model_state_dict'}` wrapper (also `{'model': …}` / `{'state_dict': …}`)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weight file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            config = json.loads(meta["model_config"]) if "model_config" in meta else None
            return load_file(str(path)), config
        except Exception as e:  # truncated, garbage header, bad metadata: the file is named, no traceback
            raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading a torch checkpoint needs torch (pip install torch); "
                          "safetensors files need nothing extra") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with non-tensor objects is refused, not executed
        first = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln),
                     str(e).splitlines()[0] if str(e) else "")
        raise ValueError(f"{path}: not a plain weights file, refused (torch.load weights_only: {type(e).__name__}: "
                         f"{first})") from e
    config = None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        config, obj = obj.get("model_config"), obj["model_state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        # a dict of state_dicts (CROMA's release: s1_encoder, s2_encoder, joint_encoder, …) → one, keys joined
        obj = {f"{part}.{k}": v for part, sub in obj.items() for k, v in sub.items()}
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors")
    return {k: _to_numpy(v) for k, v in obj.items()}, config


def save_weights(state_dict, path, model_config=None):
    """{key: array} → `.safetensors` (always) or `.pth` (needs torch; the official wrapper when a config is given)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.array, not np.ascontiguousarray: that one turns 0-d arrays (a logit scale) into shape (1,)
    arrays = {k: np.array(v, np.float32, order="C") for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"model_config": json.dumps(model_config)} if model_config else None)
        return path
    import torch

    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    torch.save({"model_config": model_config, "model_state_dict": tensors} if model_config else tensors, str(path))
    return path
