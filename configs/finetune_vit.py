"""Fine-tuning a vision transformer (ViT / DeiT) the way their papers fine-tune: AdamW,
layer-wise learning-rate decay, no weight decay on biases, norms, tokens and position
embeddings, cosine schedule with warm-up, label smoothing.

ARG = ``DATA[,model=ARCH,init=WEIGHTS,size=PX,classes=K,steps=N]``: fine-tune ``ARCH``
(default ``deit_small_patch16_224``) from ``WEIGHTS`` (default its ImageNet weights
``deit_small_patch16_224.fb_in1k``; ``init=`` for random) on dataset ``DATA``'s ``train``
split, evaluated on ``test``, at ``PX`` pixels (default 224; another size resamples the
position embeddings as timm does). Hyperparameters follow BEiT's fine-tuning (Bao et al.
2022, appendix: layer decay 0.65-0.75, weight decay 0.05, warm-up, label smoothing 0.1)
and DeiT's (Touvron et al. 2021: AdamW, cosine, no decay on norms and tokens), scaled to a
batch of 64::

    jtl train --config configs/finetune_vit.py:fashion_mnist,classes=10 --workdir runs/deit_fmnist
"""

import ml_collections

from jtl.config import config_args

NO_DECAY = (r"/bias$", r"(^|/)norm\w*/", r"/(cls_token|dist_token|pos_embed)$")  # BEiT / DeiT convention


def get_config(arg: str = "fashion_mnist"):
    o = config_args(arg, ("data",), data="fashion_mnist", model="deit_small_patch16_224",
                    init="deit_small_patch16_224.fb_in1k", size="224", classes="10", steps="2000")
    steps = int(o["steps"])
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": o["model"], "num_classes": int(o["classes"]), "init": o["init"]})
    c.data = ml_collections.ConfigDict({
        "train": o["data"], "eval": (f"test={o['data']}:test",), "image_size": int(o["size"]), "channels": 3,
        "normalize": "imagenet", "augment": ("flip", "crop")})
    c.batch_size, c.eval_batch_size, c.total_steps = 64, 128, steps
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "lr": 1e-4, "weight_decay": 0.05, "schedule": "cosine", "warmup_steps": max(1, steps // 10),
        "layer_decay": 0.75, "no_decay": NO_DECAY, "clip_norm": 1.0,
        "groups": (("all", r".", 1.0),)})  # layer decay sets the per-layer rates
    c.loss_options = ml_collections.ConfigDict({"ce": {"label_smoothing": 0.1}})
    c.eval_every, c.checkpoint_every, c.log_every = 500, 500, 50
    return c
