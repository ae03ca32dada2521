"""Parse INI files as oslo.config does and print what it read, as JSON.

    oslo_ini.py FILE...

For each file, one line: {"file", "values": {section: {key: value}}} with
oslo's normalized section names (lower case except DEFAULT), an option's
last value, and '-' in keys read as '_' (as option names are), or
{"file", "error": message} when oslo.config refuses the file.
"""

import json
import sys

from oslo_config import cfg


def read(path):
    sections, normalized = {}, {}
    parser = cfg.ConfigParser(path, sections)
    parser._add_normalized(normalized)
    try:
        parser.parse()
    except Exception as e:  # oslo's ParseError, with the line
        return {"file": path, "error": str(e)}
    values = {
        section: {key.replace("-", "_"): vals[-1] for key, vals in opts.items()}
        for section, opts in normalized.items()
        if opts
    }
    return {"file": path, "values": values}


for path in sys.argv[1:]:
    print(json.dumps(read(path)))
