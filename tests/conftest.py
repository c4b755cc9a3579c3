import pytest
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Give every parameter random, non-trivial values (not the near-identity initialisation),
    and mark ActNorm layers initialised so the values stay as drawn."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("w_out", "b_out")):   # coupling outputs: full-size, so blocks are far from identity
                p.copy_(torch.randn(p.shape, generator=g) * (scale / p.shape[-1] ** 0.5 if p.ndim > 1 else scale))
            elif name.endswith(("loc", "log_scale")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    for m in module.modules():
        if hasattr(m, "_initialized"):
            m.initialized.fill_(True)
            m._initialized = True
    return module


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device("cuda")
