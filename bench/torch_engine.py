"""PyTorch baseline of `w2s bench engine` (docs/performance.md): the same shapes, tasks and
random checkpoint as src/bench.rs, done the way the reference implementation does them
(transformers models in fp32, GPT-2 or Llama by the checkpoint's config, torch.optim.Adam, reward-model micro-batch of one pair, no
attention mask). With `--dtype bf16`, training runs under `torch.autocast` (bf16 compute, fp32
weights and Adam: mixed precision, as `w2s --dtype bf16`) and scoring on a bfloat16 model.
Prints one JSON line, as `w2s bench one` does.

    .venv-ref/bin/python bench/torch_engine.py --arch tiny --task rm-train --model DIR

`w2s bench engine` runs it once per repeat in a fresh process (so peak RSS is its own).
"""

import argparse
import json
import resource
import time

import numpy as np
import torch
import transformers

SHAPES = {
    # layers, width, heads, vocab, seq, pairs per step, timed steps
    "gpt2-small": dict(seq=256, pairs=2, steps=2),
    "tiny": dict(seq=64, pairs=16, steps=10),
    "llama-small": dict(seq=256, pairs=2, steps=2),
    "gpt2-xl": dict(seq=256, pairs=4, steps=2),
}


def rows(n, seq, vocab):
    # Fixed random ids in 1..vocab (no padding); the values do not matter for speed.
    g = np.random.default_rng(1)
    return torch.tensor(g.integers(1, vocab, size=(n, seq)), dtype=torch.long)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=SHAPES)
    ap.add_argument("--task", required=True, choices=["rm-train", "rm-score", "po-train", "po-score"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    dev = torch.device(a.device)
    s = SHAPES[a.arch]
    seq, n, steps = s["seq"], s["pairs"], s["steps"]
    torch.manual_seed(0)
    train = a.task.endswith("train")
    bf16 = a.dtype == "bf16"
    # Scoring in bf16 reads bf16 weights; training keeps fp32 weights under autocast.
    weights = torch.bfloat16 if bf16 and not train else torch.float32
    if a.task.startswith("rm"):
        body = transformers.AutoModel.from_pretrained(a.model).to(weights).to(dev)
        head = torch.nn.Linear(body.config.hidden_size, 1, bias=False).to(weights).to(dev)
        params = list(body.parameters()) + list(head.parameters())
    else:
        lm = transformers.AutoModelForCausalLM.from_pretrained(a.model).to(weights).to(dev)
        params = list(lm.parameters())
    vocab = (body if a.task.startswith("rm") else lm).config.vocab_size
    ids = rows(2 * n, seq, vocab)
    # Both sides of pair p share a prompt of 3/8 of the tokens (src/bench.rs, Shape::prompt);
    # the reference computes it twice, as it does.
    prompt = seq * 3 // 8
    ids[n:, :prompt] = ids[:n, :prompt]
    resp = torch.zeros(2 * n, seq)
    resp[:, prompt:] = 1.0
    ids, resp = ids.to(dev), resp.to(dev)
    (body if a.task.startswith("rm") else lm).eval()  # no dropout, as the bench's w2s side
    opt = torch.optim.Adam(params, lr=1e-3) if train else None
    opt2 = torch.optim.Adam(params, lr=1e-3) if a.task == "po-train" else None

    def logps(idx):
        x = ids[idx]
        logits = lm(input_ids=x).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        m = resp[idx][:, 1:]
        ssum = (lp * m).sum(1)
        return ssum, ssum / m.sum(1)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and train):
            body_step()

    def body_step():
        if a.task == "rm-train":
            opt.zero_grad()
            for p in range(n):
                h = body(input_ids=ids[[p, n + p]]).last_hidden_state
                r = head(h[:, -1]).squeeze(-1).float()
                loss = torch.nn.functional.softplus(-(r[0] - r[1])) / n
                loss.backward()
            opt.step()
        elif a.task == "rm-score":
            with torch.no_grad():
                h = body(input_ids=ids).last_hidden_state
                head(h[:, -1]).squeeze(-1).tolist()
        elif a.task == "po-train":
            opt.zero_grad()
            ssum, _ = logps(list(range(n)))
            (-ssum.sum() / (n * (seq - prompt))).backward()
            opt.step()
            opt2.zero_grad()
            _, mean = logps(list(range(2 * n)))
            x = 2.0 * (mean[:n] - mean[n:]) - 1.0
            (torch.nn.functional.softplus(-x).sum() / n).backward()
            opt2.step()
        else:
            with torch.no_grad():
                ssum, _ = logps(list(range(2 * n)))
                ssum.tolist()

    def sync():
        # CUDA runs queued kernels after the call returns: time whole steps.
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    secs = time.perf_counter() - t0
    per_step = (3 if a.task == "po-train" else 2) * n * seq
    print(json.dumps({
        "engine": "torch",
        "device": dev.type,
        "arch": a.arch,
        "task": a.task,
        "dtype": a.dtype,
        "tokens_per_s": per_step * steps / secs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "seconds": secs,
    }))


if __name__ == "__main__":
    main()
