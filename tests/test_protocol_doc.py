"""docs/protocol.md against the code: someone writes a kiosk or a receiver from it alone.

The topic table names every topic the code uses, by the code's names, with the QoS and
retain flags the code publishes with; the frame table gives each frame's magic and header
limit as the code enforces them; the signing contexts, position codes, image formats,
registration states, failure reasons and the receiver's file names are all in it. Each test
reads the document and the constants, so a change to either alone fails here.
"""

from __future__ import annotations

import re

import agent.transport.chunking as chunking
import agent.transport.protocol as protocol
import agent.transport.receipts as receipts
from agent.formats.positions import CAPTURE_POSITIONS, FINGER_NAMES, SLAP_NAMES
from agent.security import sealing
from receiver import status as receiver_status
from tests.support.paths import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()
TOPIC_ROW = re.compile(r"^\| `<prefix>/<kiosk_id>/([^`]+)` \| [^|]+ \| (\w+) \| ([^|]+) \|", re.M)


def topic_rows() -> dict[str, tuple[str, str]]:
    return {leaf: (qos, retain.strip()) for leaf, qos, retain in TOPIC_ROW.findall(DOC)}


def sources(*packages: str) -> str:
    return "\n".join(p.read_text() for package in packages for p in (ROOT / package).rglob("*.py"))


def code_topics() -> set[str]:
    """Every per-kiosk topic the code builds: Topics' properties, and those put together from
    the prefix and kiosk id elsewhere (commands, replies, ...)."""
    topics = protocol.Topics("<prefix>", "<kiosk_id>")
    names = [n for n, v in vars(protocol.Topics).items() if isinstance(v, property)]
    leaves = {getattr(topics, n).removeprefix("<prefix>/<kiosk_id>/") for n in names}
    built = re.findall(r"\{[\w.]*prefix\}/\{[\w.]*kiosk_id\}/([\w-]+)(/?)", sources("agent", "receiver"))
    return leaves | {f"{leaf}/<name>" if slash else leaf for leaf, slash in built}


def test_the_topic_table_names_every_topic_as_the_code_does() -> None:
    assert set(topic_rows()) == code_topics()
    assert {"commands/<name>", "replies", "registration-status", "registration-query"} <= code_topics()
    assert "responses" not in DOC, "the replies topic is called replies"


def test_qos_and_retain_are_those_the_code_publishes_with() -> None:
    code = sources("agent", "receiver")
    call = r"(?:(?!publish\().){0,300}?"  # the rest of the same publish call
    topic = r"publish\(\s*(?:[\w.]*topics|Topics\([^()]*\))\.(\w+),"  # a Topics property
    retained = set(re.findall(rf"{topic}{call}retain=True", code, re.S))
    qos = dict(re.findall(rf"{topic}{call}qos=(\d)", code, re.S))
    qos |= dict(re.findall(rf'publish\(f"\{{[\w.]*prefix\}}/\{{[\w.]*kiosk_id\}}/([\w-]+)",{call}qos=(\d)',
                           code, re.S))
    rows = topic_rows()
    assert retained == {"status", "telemetry"}
    assert {leaf for leaf, (_, retain) in rows.items() if retain == "**yes**"} == retained
    leaf_of = {name: getattr(protocol.Topics("p", "k"), name).removeprefix("p/k/") for name in qos
               if isinstance(getattr(protocol.Topics, name, None), property)}
    published = {leaf_of.get(name, name): level for name, level in qos.items()}
    assert {"receipts", "chunk-status", "status", "telemetry", "events", "registration-status",
            "registration-query"} <= set(published)
    for leaf, level in published.items():
        assert rows[leaf][0] == level, leaf


def test_frames_magics_and_header_limits() -> None:
    rows = dict(re.findall(r"^\| [^|]+ \| `(\w{3})` \| ([\d,]+) bytes", DOC, re.M))
    assert rows == {
        sealing.MAGIC.decode(): f"{sealing.MAX_HEADER_BYTES:,}",
        protocol.SEND_MAGIC.decode(): f"{protocol.SEND_OVERHEAD:,}",
        protocol.MAGIC.decode(): f"{protocol.MAX_HEADER_BYTES:,}",
        chunking.MANIFEST_MAGIC.decode(): f"{chunking.MAX_MANIFEST_HEADER:,}",
        chunking.CHUNK_MAGIC.decode(): f"{chunking.MAX_CHUNK_HEADER:,}",
        receipts.MAGIC.decode(): f"{receipts.MAX_HEADER_BYTES:,}",
    }
    assert f"the whole frame at most {receipts.MAX_STATUS_BYTES:,} bytes" in DOC
    for figure in (receipts.MAX_RECEIPTS, chunking.MAX_CHUNKS, protocol.MAX_QUERY_BYTES):
        assert f"{figure:,}" in DOC
    assert f"1 to {protocol.MAX_QUERY_IDS} ids" in DOC and f"at most {receipts.MAX_MISSING}" in DOC


def test_every_signing_context_is_given_exactly() -> None:
    for context in (*sealing.CONTEXTS.values(), chunking.MANIFEST_CONTEXT, receipts.CONTEXT,
                    receipts.STATUS_CONTEXT):
        assert context.decode().replace("\x00", "\\0") in DOC, context
    for alg in sealing.ALGORITHMS.values():
        assert f'exactly "{alg}"' in DOC, alg


def test_positions_formats_states_and_reasons() -> None:
    names = {**FINGER_NAMES, **SLAP_NAMES}
    for code in sorted(CAPTURE_POSITIONS - {0}):
        assert re.search(rf"\| {code} \| {names[code]}", DOC), code
    assert "| 0 | unknown, or not a finger (a face) |" in DOC
    for image_format in protocol.IMAGE_FORMATS:
        assert f'`"{image_format}"`' in DOC, image_format
    for state in receipts.CENTRAL_STATES:
        assert f"`{state}`" in DOC, state
    for code in receiver_status.REASONS:
        assert f"`{code}`" in DOC, code


def test_the_receivers_files_are_all_listed() -> None:
    layout = DOC[DOC.index("## Ids and the receiver's folders"):]
    for suffix in (".manifest.json", ".an2", ".fir", ".fac", ".complete.json", ".cancelled.json",
                   ".error.json", ".status.json", ".done", ".part"):
        assert suffix in layout, suffix
