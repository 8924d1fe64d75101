"""Print FishEye's requirements from pyproject.toml, one per line, for `pip install -r`.

    python3 requirements.py pyproject.toml [EXTRA...] [--only NAME,...] [--skip NAME,...]

The images install the dependencies in a layer of their own, before the code, so that a
change to the code does not reinstall them. Standard library only: it runs in the bare base.
"""

import argparse
import re
import tomllib


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--only", default="", help="comma-separated names to keep")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project["dependencies"])
    for extra in args.extras:
        requirements += project["optional-dependencies"][extra]
    only = {n.lower() for n in args.only.split(",") if n}
    skip = {n.lower() for n in args.skip.split(",") if n} | {project["name"]}
    for requirement in requirements:
        if name(requirement) not in skip and (not only or name(requirement) in only):
            print(requirement)


if __name__ == "__main__":
    main()
