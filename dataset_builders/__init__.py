"""The Exp-CoT data side of the ExpLLM release, in two packages:

    exp_cot/          the Exp-CoT Engine: sources (RAF-DB, AffectNet, official files, synthetic faces), Img2AU (AU
                      detectors), AU2Des, Des2Exp, Result Verification, Feedback Reflection, Format Refinement, the
                      offline writer, the CoT text layer, the prompts and the Exp-CoT Score judges
    exp_cot_dataset/  publishing: the Parquet configs, the dataset card, the Hub push, and `load_exp_cot`, which
                      training and evaluation use to read a published folder or Hub repo

Submodules are imported where they are used; importing this package does nothing else.
"""
