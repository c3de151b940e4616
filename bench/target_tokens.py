"""Multi-token targets: does appending the target's ids to the tokenised prompt (editguard's v* loss)
give the same sequence as the papers' code, which re-tokenises the prompt text with the decoded
target (compute_v: `context.format(prompt) + tok.decode(target_ids[:-1])`)? Counted over every
CounterFact case whose target (" " + target_new) is more than one token, per model's tokenizer;
written to bench/results/target-tokens.json.

    python bench/target_tokens.py smollm2-135m gemma3-270m     # tokenizers only, no model loaded
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from editguard.cases import load_counterfact  # noqa: E402
from editguard.editors.keys import fill  # noqa: E402
from editguard.models.loading import load_tokenizer  # noqa: E402


def count(model: str, cases) -> dict:
    tok = load_tokenizer(model)
    multi, differ = 0, []
    for case in cases:
        target = tok(" " + case.target_new, add_special_tokens=False)["input_ids"]
        if len(target) < 2:
            continue
        multi += 1
        prompt = fill(case.prompt, case.subject)
        appended = tok(prompt)["input_ids"] + target[:-1]
        retokenised = tok(prompt + tok.decode(target[:-1]))["input_ids"]
        if appended != retokenised:
            differ.append({"case_id": case.case_id, "appended": tok.convert_ids_to_tokens(appended[-len(target):]),
                           "retokenised": tok.convert_ids_to_tokens(retokenised[-len(target):])})
    return {"model": model, "cases": len(cases), "multi_token_targets": multi, "differ": len(differ),
            "examples": differ[:20]}


def main() -> None:
    cases = load_counterfact(os.environ.get("EDITGUARD_DATA"))
    rows = [count(model, cases) for model in (sys.argv[1:] or ["smollm2-135m"])]
    path = REPO / "bench" / "results" / "target-tokens.json"
    path.write_text(json.dumps({"rows": rows}, indent=1))
    for row in rows:
        print(f"{row['model']}: {row['multi_token_targets']} of {row['cases']} CounterFact targets are multi-token; "
              f"appended and re-tokenised differ for {row['differ']}")


if __name__ == "__main__":
    main()
