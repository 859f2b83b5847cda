"""`sid-edge info`: an artifact's manifest in readable form."""

from __future__ import annotations

import json

from sid_edge.cli.common import (
    EXIT_OK,
    ModelError,
    stdout_console,
)



def add_parser(sub) -> None:
    i = sub.add_parser("info", help="print an artifact's manifest in readable form",
                       description="Show what an artifact holds: backbone, head, preprocessing, threshold, concepts, graph "
                                   "I/O, every model file with its precision, size, sha256 and fidelity, engines and "
                                   "library versions. The manifest is validated first (exit 3 naming the bad field).")
    i.add_argument("model", metavar="DIR", help="detector artifact folder (the one holding manifest.json)")
    i.add_argument("--json", action="store_true", help="print the raw manifest JSON")



def run(args) -> int:
    from rich.table import Table

    from sid_edge.artifact.manifest import ManifestError, read_manifest

    try:
        typed = read_manifest(args.model)
        m = typed.to_dict()  # validated; shown as the manifest stores it
    except ManifestError as e:
        raise ModelError(str(e)) from e
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    out = stdout_console()
    from sid_edge.runtime.detector import warn_if_random_weights

    warn_if_random_weights(typed, args.model)
    b, h, pre = m["backbone"], m["head"], m["preprocessing"]
    out.print(f"[bold]{args.model}[/] — sid-edge detector, schema {m['schema_version']}, created {m.get('created', '?')}")
    out.print(f"backbone: {b['model_name']} / {b['pretrained']} (QuickGELU {b['quick_gelu']}, {b['feature']} {b['feature_dim']}-d, "
              f"embedding {b['embed_dim']}-d)")
    out.print(f"head: {h['kind']} k={h['k']} from {h.get('source', '?')}"
              + (f"; weights {h['weights']['file']} (shared-feature evaluation)" if h.get("weights") else ""))
    out.print(f"preprocessing: {pre.get('pipeline', 'open_clip')} — resize {pre['resize_mode']} side→{pre['size']} "
              f"{pre['interpolation']}, crop {pre.get('crop')} offset {pre.get('crop_offset', 'round')}, "
              f"mean {pre['mean']}, std {pre['std']}, {pre['colour_order']}"
              + (f"; head trained with {h['trained_with_preprocessing']}" if h.get("trained_with_preprocessing") else ""),
              highlight=False)
    choice = m.get("threshold_choice")
    out.print(f"threshold: {m['threshold']} on {m.get('threshold_on', 'p_synthetic')}"
              + (f" (chosen at FPR {choice['target_fpr']:g} on {choice['n_real']} real images of {choice['data']}"
                 f"{' / ' + choice['split'] if choice.get('split') else ''}: FPR {choice['achieved_fpr']:.4f}"
                 + (f", TPR {choice['tpr']:.4f}" if choice.get("tpr") is not None else "") + ")" if choice else ""),
              highlight=False)
    vocab, cm = m.get("vocabulary"), m.get("concept_model")
    out.print("concepts: " + (f"{vocab['count']} from {vocab['source']} (template {vocab.get('template')!r}, top "
                              f"concepts by {vocab.get('top_concepts_by')})" if vocab else "none")
              + (f"; concept model {cm['source']}" + (" (the head)" if cm.get("is_head") else "") if cm else ""),
              highlight=False)
    cpre = (cm or {}).get("preprocessing")
    if cpre and cpre.get("pipeline") != cpre.get("served_with"):
        out.print(f"concept model trained with {cpre['pipeline']}, served with {cpre['served_with']}: max |Δconcept_logit| "
                  f"{cpre['max_abs_concept_logit_diff']:.3g}, max |Δp| {cpre['max_abs_concept_probability_diff']:.3g} on "
                  f"{cpre['inputs']} parity inputs", highlight=False)
    out.print(f"input: {m['input']['name']} {m['input']['shape']}; outputs: "
              + ", ".join(f"{o['name']} {o['shape']}" for o in m["outputs"]))
    default = m.get("default_precision") or ("fp32" if "fp32" in m["models"] else next(iter(m["models"]), "?"))
    table = Table("", "file", "size", "sha256", "made by", "ORT vs PyTorch", title=f"Models (default: {default})")
    for prec, entry in m["models"].items():
        table.add_row(prec, entry["file"], f"{entry['size_bytes'] / 1e6:.1f} MB", entry["sha256"][:8],
                      _made_by(entry), _parity_text(entry.get("fidelity", {})))
    out.print(table)
    cal = m.get("calibration")
    if cal:
        sources = ", ".join(f"{k} {v}" for k, v in cal.get("by_source", {}).items())
        out.print(f"calibration: {cal['images']} images from {cal['data']} (split {cal.get('split') or '– (one pool)'}, seed {cal.get('seed')}, "
                  f"{cal.get('selection', '')}): {cal['by_label']['real']} real, {cal['by_label']['synthetic']} synthetic; "
                  f"{sources}", highlight=False)
    fset = m.get("fidelity_set")
    if fset:
        out.print(f"held-out set: {fset['images']} images from {fset['data']} (split {fset.get('split') or '– (one pool)'}; "
                  f"{fset['real']} real, {fset['synthetic']} synthetic; {fset['excluded_calibration_images']} calibration "
                  f"images excluded; drawn: {fset.get('drawn')}; threshold {fset['threshold']}; {fset.get('runtime')})",
                  highlight=False)
        out.print(fidelity_table(m["models"]))
    if m.get("engines"):
        # One line per engine: a table this wide gets its cells cut on an 80-column terminal.
        for e in m["engines"]:
            prof = e.get("profile", {})
            out.print(f"engine {e['precision']}: {e['file']} ({e['size_bytes'] / 1e6:.1f} MB), TensorRT "
                      f"{e.get('tensorrt_version')}, {e.get('gpu_name')} (compute capability "
                      f"{e.get('compute_capability')}), batch {prof.get('min_batch')}..{prof.get('max_batch')} "
                      f"(tuned for {prof.get('opt_batch')})", highlight=False, soft_wrap=True)
    else:
        out.print("engines: none (build with `sid-edge build DIR` on a machine with TensorRT and an NVIDIA GPU)")
    out.print("libraries: " + ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items()))
    from sid_edge.cli.build import machine_line

    out.print(machine_line(), highlight=False, soft_wrap=True, markup=False)
    _print_auto_plan(out, args.model, read_manifest(args.model))
    return EXIT_OK


def _print_auto_plan(out, directory, manifest: dict) -> None:
    """This machine's CPU and what ``--backend auto`` would run for each precision, and why (no model is loaded)."""
    from sid_edge.runtime.backends import auto_plan
    from sid_edge.runtime.cpu_features import detect

    out.print(f"this CPU: {detect().describe()}", highlight=False, soft_wrap=True, markup=False)
    for precision, text in auto_plan(directory, manifest).items():
        out.print(f"auto for {precision}: {text}", highlight=False, soft_wrap=True, markup=False)


def fidelity_table(models: dict):
    """A rich Table of the held-out figures in a manifest's ``models`` block (``models[p].fidelity.held_out``, see
    :mod:`sid_edge.calibration.fidelity`; typed entries or their dicts); precisions without them get dashes."""
    from rich.table import Table

    models = {p: (e if isinstance(e, dict) else e.to_dict()) for p, e in models.items()}

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    table = Table("", "AP", "ΔAP", "acc.", "agree", "max|Δp|", "mean|Δp|", "cos mean", "cos min",
                  title="Fidelity on held-out images vs FP32 (cos: head activations)")
    for precision, entry in models.items():
        h = entry.get("fidelity", {}).get("held_out")
        if not h:
            table.add_row(precision, *["–"] * 8)
            continue
        table.add_row(precision, f(h.get("ap"), ".4f"), f(h.get("delta_ap"), "+.4f"), f(h.get("accuracy"), ".3f"),
                      f(h.get("decision_agreement"), ".1%"), f(h.get("max_abs_dp"), ".1e"), f(h.get("mean_abs_dp"), ".1e"),
                      f(h.get("head_activation_cosine_mean"), ".5f"), f(h.get("head_activation_cosine_min"), ".4f"))
    for precision, entry in models.items():  # the same graphs on other backends (OpenVINO INT8, BF16 hint)
        for name, h in (entry.get("fidelity", {}).get("held_out_backends") or {}).items():
            table.add_row(f"{precision} ({name})", f(h.get("ap"), ".4f"), f(h.get("delta_ap"), "+.4f"),
                          f(h.get("accuracy"), ".3f"), f(h.get("decision_agreement"), ".1%"), f(h.get("max_abs_dp"), ".1e"),
                          f(h.get("mean_abs_dp"), ".1e"), f(h.get("head_activation_cosine_mean"), ".5f"),
                          f(h.get("head_activation_cosine_min"), ".4f"))
    return table


def _made_by(entry: dict) -> str:
    if "quantization" in entry:
        q = entry["quantization"]
        return (f"ModelOpt PTQ: {q.get('quantize_linear')} Q + {q.get('dequantize_linear')} DQ, {q.get('calibration_method')} on "
                f"{q.get('calibration_images')} images, rest {q.get('high_precision_dtype')}")
    if "conversion" in entry:
        c = entry["conversion"]
        return f"ModelOpt AutoCast: {c.get('fp16_nodes')} nodes FP16, {c.get('fp32_nodes')} FP32"
    return "torch.onnx.export"


def _parity_text(fidelity: dict) -> str:
    parity = fidelity.get("pytorch_parity") or (fidelity if "max_abs_logit_diff" in fidelity else None)
    if not parity:
        return "–"
    return f"max|Δlogit| {parity['max_abs_logit_diff']:.1e} ({parity['inputs']} inputs)"
