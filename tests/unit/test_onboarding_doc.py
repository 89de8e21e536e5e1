"""docs/onboarding-a-lab.md says what the gateway does: its mapping file loads, its JSON maps as told.

An integrator writes a mapping by copying the guide; an example that check-config refuses,
or a 422 that differs from the one shown, sends them the wrong way.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adapters.hl7v2.oru import LAB_RESULT_NS, MappingGaps, map_message
from adapters.mapping.lab_json import LabResultsDocument, for_json, json_place, to_oru
from adapters.mapping.lab_mapping import LabMapping, load_mapping
from gateway.config import ConfigProblem

DOC = (Path(__file__).resolve().parents[2] / "docs" / "onboarding-a-lab.md").read_text(encoding="utf-8")
NS = {"lr": LAB_RESULT_NS}


def block(after: str, language: str = "") -> str:
    """The first fenced block (of ``language``) after the heading or text ``after``."""
    found = re.search(r"```" + language + r"\n(.*?)```", DOC[DOC.index(after):], re.S)
    assert found, f"no ```{language} block after {after!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def mapping(tmp_path_factory: pytest.TempPathFactory) -> LabMapping:
    path = tmp_path_factory.mktemp("mappings") / "lab-city.yaml"
    path.write_text(block("## 3. Write the mapping file", "yaml"), encoding="utf-8")
    problems: list[ConfigProblem] = []
    found = load_mapping(path, problems)
    assert problems == [] and found is not None
    return found


def posted() -> dict:
    request = block("## A lab that sends JSON over REST")
    return json.loads(request[request.index("{"):])


def test_the_guides_mapping_file_loads_without_a_problem(mapping):
    assert {"HGB", "GLU", "K", "TEMP", "CULT"} <= set(mapping.tests)
    assert mapping.identify.sending_facility[0].namespace_id == "CITYLAB"


def test_the_guides_json_maps_as_it_says(mapping):
    message, _ = to_oru(LabResultsDocument.model_validate(posted()), mapping)
    payload = map_message(message, for_json(mapping)).payload
    assert payload.findtext("lr:Status", namespaces=NS) == "P"  # "the message is the least final of its orders (here P)"
    assert len(payload.findall("lr:Order", NS)) == 2
    glu = payload.find("lr:Order[2]/lr:Test", NS)
    assert glu.find("lr:NoValue", NS).get("reason") == "null"  # "GLU above is NoValue reason="null""
    assert payload.findtext("lr:Order[1]/lr:Note", namespaces=NS) == "Образец гемолизирован"


def test_the_guides_422_is_what_the_gateway_answers(mapping):
    shown = json.loads(block("`errors` lists every gap with its place in the JSON", "json"))
    doc = posted()
    doc["orders"][0]["results"][0]["unit"] = "g/dl"
    doc["orders"][1]["results"].append({"code": "XYZ", "value": "1"})
    message, places = to_oru(LabResultsDocument.model_validate(doc), mapping)
    with pytest.raises(MappingGaps) as info:
        map_message(message, for_json(mapping))
    answered = [{"code": g.code, "field": json_place(places, g.segment, g.sequence, g.field), "detail": g.reason}
                for g in info.value.gaps]
    assert answered == shown["errors"]
    assert (shown["code"], shown["field"]) == (answered[0]["code"], answered[0]["field"])
