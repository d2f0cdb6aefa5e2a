-- App. I and Fig. 14/15 data of the report: per conflict run and threshold of the sweep, the
-- flips, the deceptive flips and the Strong-Known & Weak-Unknown share (the report pools them
-- over seeds per cell, and over cells for App. I), from analysis_threshold_sweep.
-- Run: w2s sql sql/report/sweep.sql --artifacts <root>
select
    weak_model, strong_model, objective, alpha, threshold, pairs, flips, deceptive_flips,
    sk_wuk_share
from analysis_threshold_sweep
