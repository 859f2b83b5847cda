"""Unsigned metadata signals: the IPTC digital source type in XMP, and what generation tools write into PNG text
chunks, EXIF and XMP fields.

All of these are claims anyone can write, forge or strip (trust ``unsigned``): their presence is evidence, their
absence is none. XML is parsed with defusedxml (no DTDs, no entity expansion, no external references).

Sources of the vocabularies:
* IPTC NewsCodes "Digital Source Type" (http://cv.iptc.org/newscodes/digitalsourcetype/), as used by the IPTC
  Photo Metadata Standard property ``Iptc4xmpExt:DigitalSourceType`` and by C2PA ``c2pa.actions``.
* Generation front-ends: AUTOMATIC1111 / Forge / SD.Next write a ``parameters`` text chunk ("prompt … Steps: N,
  Sampler: …, Model: …") and, in JPEG/WebP, the same text in EXIF UserComment; ComfyUI writes ``prompt`` and
  ``workflow`` chunks holding JSON; InvokeAI ``invokeai_metadata`` / ``invokeai_graph`` (older: ``sd-metadata``,
  ``Dream``); Fooocus ``fooocus_scheme``; NovelAI ``Software: NovelAI`` with ``Source`` and ``Comment``.
"""

from __future__ import annotations

import json
import logging
import re

from sid_edge.provenance.containers import Metadata
from sid_edge.provenance.signals import Signal

log = logging.getLogger(__name__)

IPTC_DST_PREFIX = "http://cv.iptc.org/newscodes/digitalsourcetype/"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

#: Digital source type code -> (what it asserts, generated?). generated: True for media made (wholly or in part)
#: by an algorithm, False for captures of the real world, None for neither.
DIGITAL_SOURCE_TYPES: dict[str, tuple[str, bool | None]] = {
    "trainedAlgorithmicMedia": ("created by a generative model (trained algorithmic media)", True),
    "compositeWithTrainedAlgorithmicMedia": ("composite including generative-model output", True),
    "compositeSynthetic": ("composite including synthetic elements", True),
    "algorithmicMedia": ("created by an algorithm without training data (algorithmic media)", True),
    "algorithmicallyEnhanced": ("capture enhanced by an algorithm", None),
    "dataDrivenMedia": ("data-driven media (e.g. a rendering of measurements)", None),
    "digitalCreation": ("created with digital tools by a person", None),
    "digitalArt": ("digital art made by a person", None),
    "virtualRecording": ("recording of a virtual scene", None),
    "composite": ("composite of several elements", None),
    "humanEdits": ("capture edited by a person", None),
    "minorHumanEdits": ("capture with minor edits by a person", None),
    "screenCapture": ("screen capture", None),
    "digitalCapture": ("digital capture of a real scene (camera)", False),
    "computationalCapture": ("computational capture of a real scene (camera processing)", False),
    "compositeCapture": ("composite of several captures of real scenes", False),
    "negativeFilm": ("scan of a film negative", False),
    "positiveFilm": ("scan of a film positive", False),
    "print": ("scan of a print", False),
}

#: Names of image generators and generation front-ends as they appear in Software / CreatorTool / text fields
#: (regex, case-insensitive) -> the tool's name.
GENERATOR_NAMES: tuple[tuple[str, str], ...] = (
    (r"\bstable[\s_-]?diffusion\b|\bsdxl\b", "Stable Diffusion"),
    (r"\bmidjourney\b", "Midjourney"),
    (r"\bdall[\s·_-]?e\b", "DALL-E"),
    (r"\bfirefly\b", "Adobe Firefly"),
    (r"\bnovelai\b", "NovelAI"),
    (r"\bcomfyui\b", "ComfyUI"),
    (r"\bautomatic1111\b|\bstable-diffusion-webui\b", "AUTOMATIC1111"),
    (r"\binvokeai\b", "InvokeAI"),
    (r"\bfooocus\b", "Fooocus"),
    (r"\bimagen\b", "Google Imagen"),
    (r"\bleonardo\.?ai\b", "Leonardo.Ai"),
    (r"\bideogram\b", "Ideogram"),
    (r"\bflux(\.1)?[\s_-]?(dev|schnell|pro)\b|black forest labs", "FLUX"),
    (r"\bdreamstudio\b", "DreamStudio"),
    (r"\bbing image creator\b", "Bing Image Creator"),
    (r"\bgpt-?4o\b|\bchatgpt\b|\bopenai\b", "OpenAI"),
)


def generator_name(text: str) -> str | None:
    """The generator a free-text field names (see :data:`GENERATOR_NAMES`), or None."""
    for pattern, name in GENERATOR_NAMES:
        if re.search(pattern, text, re.IGNORECASE):
            return name
    return None


def digital_source_type_signal(value: str, source: str, trust: str = "unsigned",
                               kind: str = "iptc", details: dict | None = None) -> Signal:
    """A signal for one digital source type value (a NewsCodes URI or a bare code)."""
    code = value.strip()
    if code.startswith(IPTC_DST_PREFIX):
        code = code[len(IPTC_DST_PREFIX):]
    code = code.strip("/ ")[:100]
    words, generated = DIGITAL_SOURCE_TYPES.get(code, (f"digital source type {code!r} (not an IPTC code)", None))
    return Signal(kind, words, trust, generated, f"{code} ({trust})" if kind == "c2pa" else code, source,
                  {"digital_source_type": code, **(details or {})})


def _parse_xmp(packet: bytes):
    import defusedxml.ElementTree as DET

    start = packet.find(b"<x:xmpmeta")
    return DET.fromstring(packet[start:] if start > 0 else packet, forbid_dtd=True)


def xmp_signals(meta: Metadata) -> list[Signal]:
    """IPTC digital source type and a generator-naming ``xmp:CreatorTool`` from the XMP packets; an XMP packet
    that does not parse is noted in ``meta.notes``."""
    try:
        import defusedxml  # noqa: F401
    except ImportError:
        if meta.xmp:
            meta.notes.append("XMP not read: defusedxml is not installed (pip install 'sid-edge[provenance]')")
        return []
    out: list[Signal] = []
    for packet in meta.xmp:
        try:
            root = _parse_xmp(packet)
        except Exception as e:  # noqa: BLE001 - ParseError, DTDForbidden, EntitiesForbidden, ...
            meta.notes.append(f"XMP packet not parsed ({type(e).__name__}): ignored")
            continue
        for el in root.iter():
            for name, value in [(el.tag, el.text), *el.attrib.items()]:
                if name == f"{{{IPTC_EXT_NS}}}DigitalSourceType":
                    value = value if value and value.strip() else el.attrib.get(f"{{{RDF_NS}}}resource", "")
                    if value.strip():
                        out.append(digital_source_type_signal(value, "XMP Iptc4xmpExt:DigitalSourceType"))
                elif name == f"{{{XMP_NS}}}CreatorTool" and value and value.strip():
                    tool = generator_name(value)
                    if tool:
                        out.append(_generator(tool, f"XMP CreatorTool names {tool}", "XMP xmp:CreatorTool",
                                              {"value": value.strip()[:200]}))
    return out


def _generator(tool: str, assertion: str, source: str, details: dict | None = None) -> Signal:
    return Signal("generator-metadata", assertion, "unsigned", True, tool, source, {"tool": tool, **(details or {})})


def _json_object(text: str) -> dict | list | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _a1111_details(text: str) -> dict:
    details = {}
    for key in ("Steps", "Sampler", "Model", "Model hash", "Size", "Seed"):
        m = re.search(rf"(?:^|[,\n]\s*){re.escape(key)}:\s*([^,\n]{{1,120}})", text)
        if m:
            details[key.lower().replace(" ", "_")] = m.group(1).strip()
    return details


def text_chunk_signals(meta: Metadata) -> list[Signal]:
    """Generator metadata from PNG text chunks (see the module text for the conventions recognised)."""
    out: list[Signal] = []
    chunks = {}
    for key, text in meta.text:
        chunks.setdefault(key, text)
    keys = set(chunks)
    if "parameters" in chunks:
        text = chunks["parameters"]
        obj = _json_object(text)
        if isinstance(obj, dict) and any("fooocus" in str(k).lower() or "fooocus" in str(v).lower()[:200]
                                         for k, v in list(obj.items())[:50]):
            out.append(_generator("Fooocus", "generation parameters written by Fooocus", "PNG text chunk 'parameters'"))
        elif "Steps:" in text:
            details = _a1111_details(text)
            model = f" (model {details['model']})" if "model" in details else ""
            out.append(_generator("AUTOMATIC1111", "Stable Diffusion generation parameters in the AUTOMATIC1111 "
                                  f"web UI format{model}", "PNG text chunk 'parameters'", details))
        else:
            out.append(_generator("unknown", "a 'parameters' text chunk, the key Stable Diffusion front-ends use "
                                  "for generation settings", "PNG text chunk 'parameters'"))
    if keys & {"prompt", "workflow"}:
        found = sorted(keys & {"prompt", "workflow"})
        parsed = {k: _json_object(chunks[k]) for k in found}
        graph = parsed.get("prompt")
        nodes = sorted({str(n.get("class_type"))[:60] for n in graph.values() if isinstance(n, dict)
                        and "class_type" in n})[:20] if isinstance(graph, dict) else []
        valid = all(v is not None for v in parsed.values())
        out.append(_generator(
            "ComfyUI",
            "a ComfyUI generation graph" + ("" if valid else " (chunk is not valid JSON)"),
            "PNG text chunk " + " and ".join(f"'{k}'" for k in found),
            {"chunks": found, "valid_json": valid, **({"node_types": nodes} if nodes else {})},
        ))
    invoke = sorted(keys & {"invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream"})
    if invoke:
        out.append(_generator("InvokeAI", "generation metadata written by InvokeAI",
                              "PNG text chunk " + " and ".join(f"'{k}'" for k in invoke), {"chunks": invoke}))
    if "fooocus_scheme" in keys and not any(s.label == "Fooocus" for s in out):
        out.append(_generator("Fooocus", "generation parameters written by Fooocus", "PNG text chunk 'fooocus_scheme'"))
    for key in ("Software", "Source", "Comment", "Description", "Title", "Author"):
        text = chunks.get(key)
        tool = generator_name(text[:2000]) if text else None
        if tool and not any(s.label == tool for s in out):
            out.append(_generator(tool, f"PNG text chunk '{key}' names {tool}", f"PNG text chunk '{key}'",
                                  {"value": text.strip()[:200]}))
    return out


def exif_signals(meta: Metadata) -> list[Signal]:
    """Generator metadata from EXIF: a Software/Make/Model/Artist/ImageDescription naming a generator, or
    AUTOMATIC1111-style parameters in UserComment."""
    out: list[Signal] = []
    comment = meta.exif.get("UserComment", "")
    if "Steps:" in comment and ("Sampler:" in comment or "Seed:" in comment):
        details = _a1111_details(comment)
        out.append(_generator("AUTOMATIC1111", "Stable Diffusion generation parameters in the AUTOMATIC1111 "
                              "web UI format", "EXIF UserComment", details))
    for key in ("Software", "Make", "Model", "Artist", "ImageDescription", "UserComment"):
        text = meta.exif.get(key)
        tool = generator_name(text[:2000]) if text else None
        if tool and not any(s.label == tool for s in out):
            out.append(_generator(tool, f"EXIF {key} names {tool}", f"EXIF {key}", {"value": text.strip()[:200]}))
    return out
