"""`sid-edge train`: train a head (orthogonal, linear) or the paper's concept model on CLIP features."""

from __future__ import annotations

import json

from sid_edge.cli.common import (
    require_extra,
    EXIT_OK,
    UsageError,
    add_backbone_args,
    console,
    load_backbone_or_fail,
)

#: The kinds of sid_edge.build.head_kinds.HEAD_KINDS, spelled out so that `sid-edge --help` imports no torch
#: (tests/test_train.py checks that the two lists agree).
HEAD_KIND_CHOICES = ("orthogonal", "linear", "concepts")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a head on CLIP features of labelled images",
                       description="Extract CLIP features once (cached) and train an orthogonal (or linear) head, or "
                                   "the paper's sparse concept bottleneck model (--head-kind concepts). "
                                   "DATA: a folder with real/ and synthetic/ (or 0_real/ and 1_fake/, optionally per "
                                   "generator), a CSV manifest path,label[,source], or a SynthCLIC-shaped dataset "
                                   "(parquet files, a `datasets` save_to_disk folder, hf:OWNER/NAME), whose train split "
                                   "is used.")
    t.add_argument("--data", required=True, metavar="DATA", help="labelled images (folder, CSV, parquet, save_to_disk folder, hf:NAME)")
    t.add_argument("--out", required=True, metavar="HEAD", help="output head directory (head.safetensors + head.json)")
    add_backbone_args(t)
    t.add_argument("--head-kind", default=None, choices=HEAD_KIND_CHOICES,
                   help="what to train: an orthogonal or linear head on the pooled feature, or a concept bottleneck "
                        "model on the projected embedding (default: orthogonal)")
    for flag in ("--model", "--head"):
        t.add_argument(flag, dest=f"deprecated_{flag[2:]}", default=None, choices=HEAD_KIND_CHOICES, metavar="KIND",
                       help="deprecated spelling of --head-kind (in the other commands --model names an artifact)")
    t.add_argument("--head-dim", type=int, default=8, metavar="K", help="k, directions of the orthogonal head, 2..16 (default: %(default)s)")
    t.add_argument("--ortho-weight", type=float, default=0.33, help="weight of ‖I − ÂᵀÂ‖_F (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=200, help="maximum epochs (default: %(default)s)")
    t.add_argument("--patience", type=int, default=5, help="early-stopping patience on validation AP (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out validation share, stratified (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the validation split, the head's initialisation and training order (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=16, help="images per backbone batch during extraction (default: %(default)s)")
    t.add_argument("--cache-dir", default=None, help="feature cache folder (default: user cache dir)")
    t.add_argument("--no-cache", action="store_true", help="recompute features, do not read or write the cache")
    a = t.add_argument_group("augmentation and bias (how far to trust a verdict)")
    a.add_argument("--augment", default=None, metavar="PRESET", choices=["paper", "delivery"],
                   help="train on features of augmented views: 'paper' (random resized crop 512 at scale 0.5-1, flip, "
                        "JPEG 65-100) or 'delivery' (paper + blur + resize round trip); views are seeded by --seed and "
                        "cached per view; validation stays on unaugmented images (default: none)")
    a.add_argument("--augment-views", type=int, default=2, metavar="V",
                   help="augmented views per training image (default: %(default)s)")
    a.add_argument("--no-bias-check", action="store_true",
                   help="do not check whether labels are predictable from file format, JPEG quality, size or EXIF")
    t.add_argument("--preprocessing", default=None, choices=["clip-cues", "hf-clip", "open_clip"],
                   help="pipeline the features are extracted with, recorded in the head and served by its artifact "
                        "(default: the paper's for the head kind: clip-cues' bilinear transform for orthogonal/linear "
                        "heads, Hugging Face's CLIPImageProcessor for concept models)")
    c = t.add_argument_group("concept model (--head-kind concepts)")
    c.add_argument("--vocabulary", default="default", metavar="FILE|default",
                   help="concept vocabulary CSV (sid-edge or clip-cues layout; default: the packaged one)")
    c.add_argument("--prompt-template", default="{}", metavar="TEMPLATE",
                   help="str.format template applied to every prompt (default: '{}', prompts verbatim)")
    c.add_argument("--sparsity-weight", type=float, default=1e-4, metavar="BETA",
                   help="weight of the KL sparsity prior on the gates (default: %(default)s)")
    c.add_argument("--prior-rate", type=float, default=1e-4, metavar="ALPHA",
                   help="Bernoulli rate the gates are pulled towards (default: %(default)s)")
    c.add_argument("--temperature", type=float, default=0.1,
                   help="binary-concrete temperature while training (default: %(default)s)")


def head_kind_of(args) -> str:
    """The head kind from --head-kind, or from the deprecated --model/--head (with a warning on stderr). Raises
    UsageError when the spellings disagree."""
    kind = args.head_kind
    for flag in ("model", "head"):
        old = getattr(args, f"deprecated_{flag}", None)
        if old is None:
            continue
        console.print(f"[yellow]deprecated:[/] `sid-edge train --{flag} {old}` is now `--head-kind {old}`; "
                      f"--{flag} will name an artifact, as in the other commands", highlight=False)
        if kind is not None and kind != old:
            raise UsageError(f"--{flag} {old} contradicts --head-kind {kind}")
        kind = old
    return kind or "orthogonal"


def run(args) -> int:
    if args.augment and args.augment_views < 1:
        raise UsageError(f"--augment-views {args.augment_views}: must be >= 1")
    require_extra("train", "torch", "open_clip", "onnx")
    kind = head_kind_of(args)
    if kind == "orthogonal" and not 2 <= args.head_dim <= 16:
        raise UsageError(f"--head-dim {args.head_dim}: must be between 2 and 16")
    from sid_edge.tools.datasets import read_labelled_images

    try:
        items = read_labelled_images(args.data, split="train")  # a dataset without splits is used whole
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    import numpy as np

    from sid_edge.build.concept_model import vocabulary_block
    from sid_edge.build.features import extract_features
    from sid_edge.build.head_kinds import ConceptTrainConfig, TrainConfig
    from sid_edge.build.heads import head_config, save_head
    from sid_edge.build.training import train

    backbone = load_backbone_or_fail(args.clip_model, args.clip_pretrained)
    from sid_edge.artifact.preprocessing import Preprocessing

    pipeline = args.preprocessing or ("hf-clip" if kind == "concepts" else "clip-cues")
    base = backbone.preprocessing
    backbone.preprocessing = Preprocessing.for_pipeline(pipeline, base.size, base.mean, base.std)
    inputs, vocabulary = {}, None
    if kind == "concepts":
        from sid_edge.build.concept_directions import build_concept_set

        try:  # before extraction: a bad vocabulary fails in seconds, not after minutes of features
            cset = build_concept_set(backbone, args.vocabulary, template=args.prompt_template)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from e
        config = ConceptTrainConfig(temperature=args.temperature, sparsity_weight=args.sparsity_weight,
                                    prior_rate=args.prior_rate, lr=args.lr, max_epochs=args.epochs,
                                    patience=args.patience, val_fraction=args.val_fraction, seed=args.seed)
        inputs = {"text_embeddings": cset.directions}
        vocabulary = vocabulary_block(cset.concepts, cset.template, cset.source, cset.sha256)
        what = f"a concept model ({len(cset.concepts)} concepts from {cset.source})"
    else:
        config = TrainConfig(kind=kind, k=args.head_dim if kind == "orthogonal" else 1,
                             ortho_weight=args.ortho_weight, lr=args.lr, max_epochs=args.epochs,
                             patience=args.patience, val_fraction=args.val_fraction, seed=args.seed)
        what = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} head (k={config.k})"
    feats = extract_features(backbone, [it.image for it in items], batch_size=args.batch_size,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache)
    for idx, reason in sorted(feats.errors.items()):
        console.print(f"[yellow]skipped[/] {items[idx].key}: {reason}", highlight=False)
    labels = np.asarray([items[i].label for i in feats.kept])
    if not args.no_bias_check:
        from sid_edge.robustness.bias import format_bias

        for line in format_bias(items):
            console.print(f"[yellow]warning[/] {args.data}: {line}", highlight=False)
    features = feats.embedding if kind == "concepts" else feats.pooled
    console.print(f"Training {what} on {len(labels)} images "
                  f"({int((labels == 0).sum())} real, {int((labels == 1).sum())} synthetic)", highlight=False)
    validation, train_y = None, labels
    if args.augment:
        from sid_edge.build.features import augmented_training_set

        try:
            features, train_y, validation = augmented_training_set(
                backbone, items, feats, args.augment, views=args.augment_views, seed=args.seed,
                val_fraction=args.val_fraction, feature="embedding" if kind == "concepts" else "pooled",
                batch_size=args.batch_size, cache_dir=args.cache_dir, use_cache=not args.no_cache)
        except ValueError as e:
            raise UsageError(f"{args.data}: {e}") from e
        console.print(f"augmentation {args.augment}: {len(train_y)} training views, validation on "
                      f"{len(validation[1])} unaugmented images", highlight=False)
    try:
        head, report = train(kind, features, train_y, config, validation=validation, **inputs)
    except ValueError as e:
        raise UsageError(f"{args.data}: {e}") from e
    cfg = head_config(head, backbone.identity.to_dict(), vocabulary=vocabulary,
                      training={**report.to_dict(), "data": str(args.data), "skipped_images": len(feats.errors),
                                "config": config.__dict__,
                                **({"augment": {"preset": args.augment, "views": args.augment_views, "seed": args.seed}}
                                   if args.augment else {})})
    cfg.preprocessing = backbone.preprocessing.to_dict()  # the pipeline its features were extracted with
    save_head(head, cfg, args.out)
    if kind == "concepts":
        figures = (f"active gates per image {report.active_gates_initial:.1f} → {report.active_gates:.1f} of "
                   f"{report.n_concepts}")
    else:
        figures = f"‖I − ÂᵀÂ‖_F {report.ortho_initial:.3f} → {report.ortho_final:.3f}"
    console.print(f"validation AP {report.val_ap:.4f} (n_val={report.n_val}, best epoch {report.best_epoch}); "
                  f"{figures}", highlight=False)
    console.print(f"{'concept model' if kind == 'concepts' else 'head'} written to {args.out}", highlight=False)
    print(json.dumps({"head": str(args.out), **report.to_dict()}))
    return EXIT_OK
