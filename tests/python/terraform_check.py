"""Checks Terraform configurations without a Terraform binary
(tests/tests/terraform.rs runs it on terraform/ and on broken fixtures).

    terraform_check.py ROOT [--required-actions FILE] [--policy NAME]

Every directory under ROOT holding .tf files is one module. Checked:

- parse: every .tf parses (python-hcl2);
- fmt: `terraform fmt` layout: two spaces per open bracket (as hclwrite
  indents), no tabs or trailing spaces, and in each run of consecutive
  one-line attributes the `=` signs aligned one space after the longest
  name, with one space after them;
- variables: each has a type and a description and is used (a use inside
  its own validation does not count); one that looks secret (its name, or
  `sensitive = true`) has no default value; no user-data carries a secret
  (such a variable, a random_*/tls_private_key value, a secret version or
  an SSM parameter): instances read secrets at boot;
- references: every var., local., module.NAME.OUTPUT, data.TYPE.NAME and
  TYPE.NAME (a resource of a provider the module requires) resolves; module
  calls set only the callee's variables and all its required ones; every
  output refers to something;
- databases (aws_db_instance, aws_rds_cluster) are not publicly accessible
  and their storage is encrypted, as are launch templates' and aws_ebs_volume
  volumes: each as a literal, not an expression;
- with --required-actions: the actions the aws_iam_policy_document data
  source named --policy (default "provider") allows are exactly the lines
  of FILE (`kubeforge aws required-actions`).

Each problem is one line naming the file or block and the check; the exit
status is 1 when there is any.
"""

import argparse
import os
import re
import sys

import hcl2

META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}
BUILTIN_ROOTS = {"var", "local", "module", "data", "path", "terraform", "count", "each", "self"}
SECRET_NAME = re.compile(r"(password|passwd|secret|token|private_key|api_key|credential|(^|_)key$)")
NOT_A_VALUE = re.compile(r"_(arn|arns|id|ids|name|names|path|file|prefix)$")

# What holds a secret's value: user-data (readable through the EC2 API
# and kept at rest there) must name where it is instead.
SECRET_SOURCES = {
    "random_id",
    "random_password",
    "random_string",
    "tls_private_key",
    "aws_secretsmanager_secret_version",
    "aws_ssm_parameter",
}

problems = []


def secretish(name, body):
    return body.get("sensitive") is True or bool(SECRET_NAME.search(name) and not NOT_A_VALUE.search(name))


def problem(where, check, message):
    problems.append(f"{where}: {check}: {message}")


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def entries(doc, kind):
    """(label, body) of each block of `kind`; for two-label blocks the
    label is (type, name)."""
    out = []
    for block in doc.get(kind, []):
        for k1, v1 in block.items():
            if k1.startswith("__"):
                continue
            if kind in ("resource", "data"):
                for k2, v2 in v1.items():
                    if not k2.startswith("__"):
                        out.append(((unquote(k1), unquote(k2)), v2))
            else:
                out.append((unquote(k1), v1))
    return out


def segments(text):
    """The contents of every `${...}` in `text`."""
    out = []
    i = 0
    while True:
        start = text.find("${", i)
        if start < 0:
            return out
        depth, j = 0, start + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(text[start + 2 : j])
        i = j + 1


def expressions(value):
    if isinstance(value, str):
        yield from segments(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not k.startswith("__"):
                yield from expressions(k)
                yield from expressions(v)
    elif isinstance(value, list):
        for v in value:
            yield from expressions(v)


def refs(value, providers):
    """(kind, parts) of each reference in `value`'s expressions."""
    name = r"([A-Za-z_][\w-]*)"
    pats = [
        ("var", re.compile(rf"(?<![\w.])var\.{name}")),
        ("local", re.compile(rf"(?<![\w.])local\.{name}")),
        ("module", re.compile(rf"(?<![\w.])module\.{name}(?:\.{name})?")),
        ("data", re.compile(rf"(?<![\w.])data\.{name}\.{name}")),
    ]
    if providers:
        alts = "|".join(sorted(re.escape(p) for p in providers))
        pats.append(("resource", re.compile(rf"(?<![\w.])((?:{alts})_[A-Za-z0-9_]+)\.{name}")))
    out = []
    for expr in expressions(value):
        # Text inside string literals is not code; their interpolations are.
        expr = STRING.sub(lambda m: " ".join(segments(m.group(0))), expr)
        for kind, pat in pats:
            for m in pat.finditer(expr):
                out.append((kind, tuple(g for g in m.groups() if g is not None)))
    return out


# ---- fmt ------------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
ASSIGN = re.compile(r'^(\s*)([A-Za-z_][\w-]*|"(?:[^"\\]|\\.)*")(\s*)=(?![=>])(\s*)(.*)$')


def code_of(line):
    """The line without string contents and trailing comment."""
    bare = STRING.sub('""', line)
    for marker in ("#", "//"):
        at = bare.find(marker)
        if at >= 0:
            bare = bare[:at]
    return bare


def net_brackets(code):
    return sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")


def check_fmt(path, text):
    lines = text.split("\n")
    indents = []
    heredoc = None
    chain = []  # (line number, name width, assign column) of one run

    def close_chain():
        if chain:
            width = max(w for _, w, _ in chain)
            for n, w, col in chain:
                if col != width + 1:
                    problem(f"{path}:{n}", "fmt", f"'=' at column {col + 1}, expected {width + 2} (aligned with its neighbours)")
        chain.clear()

    for n, line in enumerate(lines, 1):
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if "\t" in line:
            problem(f"{path}:{n}", "fmt", "tab character (terraform fmt indents with spaces)")
        if line != line.rstrip():
            problem(f"{path}:{n}", "fmt", "trailing whitespace")
        stripped = line.strip()
        if not stripped:
            close_chain()
            continue
        code = code_of(line)
        net = net_brackets(code)
        if net > 0:
            want = 2 * len(indents)
            indents.append(net)
        elif net < 0:
            closed = -net
            while closed > 0 and indents:
                if closed >= indents[-1]:
                    closed -= indents.pop()
                else:
                    indents[-1] -= closed
                    closed = 0
            want = 2 * len(indents)
        else:
            want = 2 * len(indents)
        have = len(line) - len(line.lstrip(" "))
        if have != want:
            problem(f"{path}:{n}", "fmt", f"indented {have} spaces, expected {want}")
        m = ASSIGN.match(line)
        if m and net_brackets(code_of(m.group(5))) == 0 and not m.group(5).startswith("<<"):
            if m.group(4) != " ":
                problem(f"{path}:{n}", "fmt", "expected one space after '='")
            if m.group(3) == "":
                problem(f"{path}:{n}", "fmt", "expected a space before '='")
            chain.append((n, len(m.group(1)) + len(m.group(2)), len(m.group(1)) + len(m.group(2)) + len(m.group(3))))
        else:
            close_chain()
        hd = re.search(r"<<-?([A-Za-z_]\w*)\s*$", code)
        if hd:
            heredoc = hd.group(1)
    close_chain()
    if not text.endswith("\n") or text.endswith("\n\n"):
        problem(path, "fmt", "the file must end with exactly one newline")


# ---- modules --------------------------------------------------------------


class Module:
    def __init__(self, directory):
        self.dir = directory
        self.files = {}  # path -> parsed document
        self.ok = True

    def all(self, kind):
        for path, doc in self.files.items():
            for label, body in entries(doc, kind):
                yield path, label, body

    def providers(self):
        names = set()
        for _, doc in self.files.items():
            for block in doc.get("terraform", []):
                for req in block.get("required_providers", []):
                    names.update(k for k in req if not k.startswith("__"))
            for label, _ in entries(doc, "provider"):
                names.add(label)
            for kind in ("resource", "data"):
                for (rtype, _), _ in entries(doc, kind):
                    names.add(rtype.split("_", 1)[0])
        return names | {"aws"}

    def variables(self):
        return {label: body for _, label, body in self.all("variable")}

    def outputs(self):
        return {label: body for _, label, body in self.all("output")}


def load(directory, modules):
    directory = os.path.realpath(directory)
    if directory in modules:
        return modules[directory]
    module = Module(directory)
    modules[directory] = module
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".tf"):
            continue
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        check_fmt(path, text)
        try:
            module.files[path] = hcl2.loads(text)
        except Exception as e:  # the parser raises several kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problem(path, "parse", f"does not parse: {first}")
            module.ok = False
    return module


def check_module(module, modules):
    if not module.ok:
        return
    providers = module.providers()
    variables = module.variables()
    locals_ = {
        k
        for _, doc in module.files.items()
        for block in doc.get("locals", [])
        for k in block
        if not k.startswith("__")
    }
    resources = {label for _, label, _ in module.all("resource")}
    datas = {label for _, label, _ in module.all("data")}
    calls = {}
    for path, label, body in module.all("module"):
        source = unquote(body.get("source", ""))
        callee = None
        if isinstance(source, str) and source.startswith(("./", "../")):
            target = os.path.join(module.dir, source)
            if os.path.isdir(target):
                callee = load(target, modules)
            else:
                problem(f"{path}: module {label}", "references", f"source {source} is not a directory")
        calls[label] = callee
        if callee is not None and callee.ok:
            callee_vars = callee.variables()
            for arg in body:
                if arg.startswith("__") or arg in META_ARGS:
                    continue
                if arg not in callee_vars:
                    problem(f"{path}: module {label}", "references", f"sets {arg}, which {source} does not declare")
            for var, vbody in callee_vars.items():
                if "default" not in vbody and var not in body:
                    problem(f"{path}: module {label}", "references", f"does not set {var}, which {source} requires")

    def resolve(kind, parts):
        if kind == "var":
            return parts[0] in variables
        if kind == "local":
            return parts[0] in locals_
        if kind == "data":
            return (parts[0], parts[1]) in datas
        if kind == "resource":
            return (parts[0], parts[1]) in resources
        if kind == "module":
            if parts[0] not in calls:
                return False
            callee = calls[parts[0]]
            if len(parts) < 2 or callee is None or not callee.ok:
                return True
            return parts[1] in callee.outputs()
        return True

    def show(kind, parts):
        return ".".join(parts) if kind == "resource" else ".".join((kind,) + parts)

    used = set()
    for path, doc in module.files.items():
        for kind in ("variable", "locals", "resource", "data", "module", "output", "provider", "terraform"):
            if kind == "locals":
                blocks = [(f"locals {k}", {k: v}) for block in doc.get("locals", []) for k, v in block.items() if not k.startswith("__")]
            elif kind == "terraform":
                blocks = [("terraform", b) for b in doc.get("terraform", [])]
            else:
                blocks = [
                    (f"{kind} {'.'.join(label) if isinstance(label, tuple) else label}", body)
                    for label, body in entries(doc, kind)
                ]
            for where, body in blocks:
                found = refs(body, providers)
                for rkind, parts in found:
                    if rkind == "var" and not (kind == "variable" and where == f"variable {parts[0]}"):
                        used.add(parts[0])
                    if not resolve(rkind, parts):
                        problem(f"{path}: {where}", "references", f"{show(rkind, parts)} does not exist")
                if kind == "output" and not found:
                    problem(f"{path}: {where}", "outputs", "refers to nothing (no variable, local, resource, data source or module output)")

    for path, name, body in module.all("variable"):
        where = f"{path}: variable {name}"
        if "type" not in body:
            problem(where, "variables", "has no type")
        if "description" not in body:
            problem(where, "variables", "has no description")
        if name not in used:
            problem(where, "variables", "is declared but never used")
        if secretish(name, body) and body.get("default") is not None:
            problem(where, "secrets", "looks secret but has a default value (pass it in, or read it from a secret store)")

    secret_vars = {name for _, name, body in module.all("variable") if secretish(name, body)}
    for path, (rtype, name), body in module.all("resource"):
        where = f"{path}: {rtype}.{name}"
        if rtype in ("aws_db_instance", "aws_rds_cluster", "aws_rds_cluster_instance"):
            if body.get("publicly_accessible") is not False:
                problem(where, "database", "is publicly accessible: publicly_accessible must be the literal false")
        if rtype in ("aws_db_instance", "aws_rds_cluster"):
            if body.get("storage_encrypted") is not True:
                problem(where, "encryption", "storage is not encrypted: storage_encrypted must be the literal true")
        if rtype == "aws_ebs_volume" and body.get("encrypted") is not True:
            problem(where, "encryption", "volume is not encrypted: encrypted must be the literal true")
        if rtype in ("aws_launch_template", "aws_instance") and "user_data" in body:
            for rkind, parts in refs(body["user_data"], providers):
                carried = None
                if rkind in ("resource", "data") and parts[0] in SECRET_SOURCES:
                    carried = ".".join(parts[:2]) if rkind == "resource" else "data." + ".".join(parts[:2])
                if rkind == "var" and parts[0] in secret_vars:
                    carried = f"var.{parts[0]}"
                if carried:
                    problem(where, "secrets", f"user_data carries a secret value ({carried}): pass its ARN and read it at boot")
        if rtype == "aws_launch_template":
            for bdm in body.get("block_device_mappings", []):
                for ebs in bdm.get("ebs", []):
                    if ebs.get("encrypted") is not True:
                        problem(where, "encryption", "a block device is not encrypted: ebs.encrypted must be the literal true")


def policy_actions(modules, name):
    found = []
    for module in modules.values():
        for path, (dtype, dname), body in module.all("data"):
            if dtype == "aws_iam_policy_document" and dname == name:
                found.append((path, body))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--required-actions", help="file with one IAM action per line")
    parser.add_argument("--policy", default="provider", help="name of the aws_iam_policy_document held to them")
    args = parser.parse_args()

    dirs = sorted(
        {d for d, _, files in os.walk(args.root) if any(f.endswith(".tf") for f in files) and "/.terraform" not in d}
    )
    if not dirs:
        problem(args.root, "parse", "no .tf files found")
    modules = {}
    for d in dirs:
        load(d, modules)
    for module in list(modules.values()):
        check_module(module, modules)

    if args.required_actions:
        with open(args.required_actions, encoding="utf-8") as f:
            required = {line.strip() for line in f if line.strip()}
        docs = policy_actions(modules, args.policy)
        if not docs:
            problem(args.root, "policy", f'no data "aws_iam_policy_document" "{args.policy}" found')
        for path, body in docs:
            where = f"{path}: data.aws_iam_policy_document.{args.policy}"
            granted = set()
            for st in body.get("statement", []):
                if unquote(st.get("effect", '"Allow"')) == "Deny":
                    continue
                if "not_actions" in st:
                    problem(where, "policy", "a statement uses not_actions: list the actions")
                for action in st.get("actions", []):
                    granted.add(unquote(action))
            for action in sorted(required - granted):
                problem(where, "policy", f"lacks {action}, which the aws provider needs")
            for action in sorted(granted - required):
                problem(where, "policy", f"grants {action}, which the aws provider does not need")

    if problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    files = sum(len(m.files) for m in modules.values())
    print(f"ok: {files} files in {len(modules)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
