import json

import torch

from ptuning_v2 import evaluate
from ptuning_v2.inference import label_logprobs, load_session


def test_evaluate_writes_predictions_and_metrics(tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate.main(["--checkpoint", str(tiny_checkpoint), "--output_dir", str(out), "--batch_size", "4"])
    lines = [json.loads(l) for l in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6 and {"prompt", "labels", "predict"} <= set(lines[0])
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(metrics, ensure_ascii=False))
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "accuracy", "label_scoring_accuracy"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["label_words"] == ["坏", "好"] and saved["model"] == "base + prefix"
    # Label scoring picks one of the two words, so its accuracy is a multiple of 1/6.
    assert round(saved["label_scoring_accuracy"] * 6 / 100, 3) == round(saved["label_scoring_accuracy"] * 6 / 100)

    base = evaluate.main(["--checkpoint", str(tiny_checkpoint), "--base_only", "--output_dir", str(tmp_path / "b")])
    assert base["model"] == "base model, no prefix"


def test_label_scores_equal_a_direct_computation(tiny_checkpoint):
    session = load_session(str(tiny_checkpoint))
    prompts = [session.prompt_ids("这个好不好"), session.prompt_ids("天")]  # different lengths: left padding
    candidates = [session.tokenizer.encode("好", add_special_tokens=False),
                  session.tokenizer.encode("好不", add_special_tokens=False)]
    scores = label_logprobs(session, prompts, candidates)
    for b, prompt in enumerate(prompts):
        for k, cand in enumerate(candidates):
            ids = torch.tensor([prompt + cand])
            with torch.no_grad():
                logp = torch.log_softmax(session.model(ids).logits[0], -1)
            expected = sum(logp[len(prompt) + j - 1, t] for j, t in enumerate(cand))
            assert abs(scores[b, k].item() - expected.item()) < 1e-4
