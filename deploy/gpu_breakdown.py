"""Where a paper-shape training step of the `full` variant spends its GPU time (bf16, batch 32)."""

import torch

from drx.config import load_config
from drx.model import build_model

torch.manual_seed(0)
dev = torch.device("cuda")
model = build_model(load_config("paper").model).to(dev).train()
x = torch.randn(32, 3, 384, 384, device=dev)


def timed(name, fn, n=20):
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    print(f"{name:<34} {start.elapsed_time(end) / n:8.2f} ms")


with torch.autocast("cuda", dtype=torch.bfloat16):
    timed("encoder forward+backward", lambda: model.encoder(x)[:, 0].float().sum().backward())
    timed("prior view (resize+normalise)", lambda: model.prior.prepare_input(x, model.imagenet_mean, model.imagenet_std, "clean"))
    view = model.prior.prepare_input(x, model.imagenet_mean, model.imagenet_std, "clean")
    with torch.no_grad():
        timed("prior controller forward", lambda: model.prior.encode_image(view))
    tokens = model.encoder(x).detach().requires_grad_()
    experts, context = model.expert_and_context(x, tokens)
    timed("expert+context tokens", lambda: model.expert_and_context(x, tokens))
    timed("DSDM forward+backward", lambda: model.dsdm(experts, tokens, context)[0].float().sum().backward(retain_graph=True))
    timed("full model forward+backward", lambda: model(x).score.float().sum().backward())
