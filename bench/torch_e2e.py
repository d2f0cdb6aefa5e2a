"""End-to-end baseline of bench/e2e.sh (docs/performance.md): gt-train of a
GPT-2-small-architecture reward model on the first N pairs of a harmless split, the way the
reference implementation does it (docs/reference.md §2): each side tokenized whole with left
truncation, micro-batch one pair (chosen and rejected right-padded together with id 0, no
attention mask), reward at position (non-zero ids) - 1, BCE on sigmoid(r_a - r_b) divided by
the accumulation count, Adam (torch defaults, lr 1e-5) stepped every 32 pairs, cosine schedule.

    python bench/torch_e2e.py tokenizer --data GT.jsonl --out DIR/tokenizer.json
    python bench/torch_e2e.py train --data GT.jsonl --model DIR --pairs 256

`tokenizer` writes the word-level tokenizer both engines use (no pretrained vocabulary can be
downloaded here); `train` prints one JSON line with pairs/s, seconds and peak RSS.
"""

import argparse
import json
import math
import random
import resource
import time


def texts(path, n=None):
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if n is not None and i >= n:
                break
            d = json.loads(line)
            out.append((d["chosen"], d["rejected"]))
    return out


def make_tokenizer(a):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=a.vocab, special_tokens=["[UNK]"])
    tok.train_from_iterator((t for pair in texts(a.data) for t in pair), trainer)
    tok.save(a.out)


def train(a):
    t_start = time.perf_counter()
    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    body = transformers.GPT2Model.from_pretrained(a.model).float()
    body.eval()  # as the reference: dropout off while training (docs/reference.md §2)
    head = torch.nn.Linear(body.config.n_embd, 1, bias=False)
    max_ctx = min(a.max_ctx, body.config.n_positions)

    def encode(t):
        ids = tok.encode(t).ids
        return torch.tensor(ids[-max_ctx:], dtype=torch.long)

    pairs = texts(a.data, a.pairs)
    rng = random.Random(0)
    data = []
    for c, r in pairs:
        swap = rng.random() < 0.5
        x, y = (encode(c), encode(r)) if swap else (encode(r), encode(c))
        data.append((x, y, 1.0 if swap else 0.0))
    order = torch.randperm(len(data)).tolist()
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-5)
    nsteps = len(data) // a.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=nsteps, eta_min=0)
    for s in range(nsteps):
        opt.zero_grad()
        for i in order[s * a.batch : (s + 1) * a.batch]:
            x, y, label = data[i]
            ids = torch.nn.utils.rnn.pad_sequence([x, y], batch_first=True, padding_value=0)
            h = body(input_ids=ids).last_hidden_state
            n = (ids != 0).sum(1)
            r = head(h[torch.arange(2), n - 1]).squeeze(-1)
            p = torch.sigmoid(r[0] - r[1])
            loss = torch.nn.functional.binary_cross_entropy(p, torch.tensor(label)) / a.batch
            loss.backward()
        opt.step()
        sched.step()
    secs = time.perf_counter() - t_start
    print(json.dumps({
        "engine": "torch",
        "pairs": nsteps * a.batch,
        "pairs_per_s": nsteps * a.batch / secs,
        "seconds": secs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--vocab", type=int, default=50257, help="largest vocabulary (the model's)")
    r = sub.add_parser("train")
    r.add_argument("--data", required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--pairs", type=int, default=256)
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--max-ctx", type=int, default=512)
    a = ap.parse_args()
    make_tokenizer(a) if a.cmd == "tokenizer" else train(a)


if __name__ == "__main__":
    main()
