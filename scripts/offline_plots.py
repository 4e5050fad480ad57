"""Write DVC's HTML template for `dvc plots show` with Vega, Vega-Lite and vega-embed inlined, so
the page renders with no internet (DVC's own template loads them from a CDN).

    python scripts/offline_plots.py NODE_MODULES TEMPLATE

NODE_MODULES is where npm installed scripts/vega/package.json; scripts/setup runs this and points
DVC's `plots.html_template` (in .dvc/config.local) at TEMPLATE.
"""

import sys
from pathlib import Path

PACKAGES = ("vega", "vega-lite", "vega-embed")  # in load order: each needs the one before
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(node_modules: Path, template: Path) -> None:
    scripts = []
    for package in PACKAGES:
        code = (node_modules / package / "build" / f"{package}.min.js").read_text(encoding="utf-8")
        # A script element ends at the first "</script", wherever it is: keep the code's own out.
        code = code.replace("</script", "<\\/script")
        scripts.append(f"<script>{code}</script>")
    template.write_text(PAGE.format(scripts="\n".join(scripts)), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
