-- Fig. 8 data of the report: every conflict run's Strong-Known & Weak-Unknown share of the test
-- pairs beside its deception score (NULL without flips), from analysis_area_share.
-- Run: w2s sql sql/report/area.sql --artifacts <root>
select objective, alpha, sk_wuk_share, deception_score from analysis_area_share
