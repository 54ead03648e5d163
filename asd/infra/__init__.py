"""What the method runs on: the config, data set folders, the feature cache, run folders,
checkpoints, atomic files and the command-line wrapper every command shares.
"""
