"""Generate compact FIX data-dictionary tables from QuickFIX's FIXnn.xml spec files.

    python -m aiolowlat.protocols.fix.gen_dictionary /path/to/share/quickfix

The XML ships in the quickfix / quickfix-py wheels (share/quickfix/FIX42.xml, FIX44.xml).
Components are flattened into their messages and groups, so a table lookup never recurses
into components at run time. The output (_spec_fix42.py, _spec_fix44.py) is committed.
"""

from __future__ import annotations

import pathlib
import pprint
import sys
import xml.etree.ElementTree as ET

VERSIONS = {"FIX42.xml": "_spec_fix42.py", "FIX44.xml": "_spec_fix44.py"}


class _Spec:
    def __init__(self, root: ET.Element):
        self.tag_of = {}
        self.fields = {}
        for f in root.find("fields"):
            tag = int(f.get("number"))
            self.tag_of[f.get("name")] = tag
            enums = tuple(v.get("enum") for v in f.findall("value")) or None
            self.fields[tag] = (f.get("name"), f.get("type"), enums)
        self.components = {c.get("name"): c for c in root.find("components") or ()}

    def section(self, elem: ET.Element, required: bool = True):
        """(member tags in order, required tags, groups) of a message, group or component."""
        members, req, groups = [], [], {}
        for child in elem:
            is_req = required and child.get("required") == "Y"
            if child.tag == "field":
                tag = self.tag_of[child.get("name")]
                members.append(tag)
                if is_req:
                    req.append(tag)
            elif child.tag == "group":
                count = self.tag_of[child.get("name")]
                members.append(count)
                if is_req:
                    req.append(count)
                g_members, g_req, g_groups = self.section(child, True)
                groups[count] = (g_members[0], tuple(g_members), tuple(g_req), g_groups)
            elif child.tag == "component":
                c_members, c_req, c_groups = self.section(
                    self.components[child.get("name")], is_req
                )
                members += c_members
                req += c_req
                groups.update(c_groups)
        return members, req, groups


def generate(xml_path: pathlib.Path) -> str:
    root = ET.parse(xml_path).getroot()
    spec = _Spec(root)
    begin = f"{root.get('type')}.{root.get('major')}.{root.get('minor')}"
    header = spec.section(root.find("header"))
    trailer = spec.section(root.find("trailer"))
    messages = {}
    for m in root.find("messages"):
        members, req, groups = spec.section(m)
        messages[m.get("msgtype")] = (
            m.get("name"), m.get("msgcat"), tuple(members), tuple(req), groups
        )
    out = [
        f'"""FIX {begin} data dictionary, generated from {xml_path.name} by gen_dictionary.py."""',
        "",
        "# fmt: off",
        f"BEGIN_STRING = {begin!r}",
        "# tag: (name, type, allowed enum values or None)",
        f"FIELDS = {pprint.pformat(spec.fields, width=100, compact=True)}",
        "# (member tags, required tags, groups); groups: count tag -> (delimiter, members,",
        "# required, nested groups)",
        f"HEADER = {pprint.pformat((tuple(header[0]), tuple(header[1]), header[2]), width=100)}",
        f"TRAILER = {pprint.pformat((tuple(trailer[0]), tuple(trailer[1]), trailer[2]))}",
        "# msgtype: (name, category, member tags, required tags, groups)",
        f"MESSAGES = {pprint.pformat(messages, width=100, compact=True)}",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    src = pathlib.Path(argv[0])
    here = pathlib.Path(__file__).resolve().parent
    for xml_name, module in VERSIONS.items():
        (here / module).write_text(generate(src / xml_name))
        print(f"wrote {here / module}")


if __name__ == "__main__":
    main(sys.argv[1:])
