"""The report's method, in the order a reader meets it.

``features`` (log-mel), ``model`` (Table 1's ResNet and the embedding head), ``losses``
(sub-cluster AdaCos, eq. (1); mixup; the KL loss), ``sampling`` (the mixup pairs of each step),
``steps`` (Step 1 and Step 2: their domains, what trains, their schedules), ``optim`` (AdamP), ``detectors`` (GMM on source, One-Class SVM on target, thresholds),
``metrics`` (AUC, pAUC, harmonic means), ``embed`` (embeddings of many clips) and ``reference``
(the simple statistic the results are compared with). Nothing here reads a run folder or a
command line.
"""
