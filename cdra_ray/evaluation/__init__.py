"""The paper's evaluation protocol (§3.1, Eq. 4-5, App. B-C, Table 1, Fig. 4) as a command: ``cdra-ray evaluate``.

    metrics.py     pure metric functions: Eq. 4 (Acc_DA), Eq. 5 (Acc_PF) with PrefEval's error types, bootstrap CIs
    prompts.py     the judge's Yes/No questions (App. B criteria, PrefEval's four checks), quoted safely
    judging.py     a Yes/No judge over any engine: constrained or free answer, one retry, unparsed reported
    baselines.py   zero-shot / few-shot / CoT prompts and the trained policy's inference format
    generation.py  responses of every method (one engine per model, each in its own process), resumable
    grading.py     every judge question for every response, resumable, plus the judge's self-agreement
    report.py      table.md/csv (Table 1 shape), topics, radar.png (Fig. 4), curves.png, summary.json
    run.py         run_evaluation(config): the order of the phases

Departures from the paper: the paper's Fig. 10 (misleading risk) repeats Fig. 9 by mistake; our misleading
question follows the definition in App. B. The paper does not say how its judge's answers were parsed or what
happened to unreadable ones: here an unreadable answer is retried once and then left out of the metrics it feeds
(and counted), never guessed.
"""
