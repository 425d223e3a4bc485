"""The floor under every fcnseg layer: small utilities with no project imports and no
TensorFlow.

    common.cli     one error line and exit status for every command, quiet TensorFlow start-up
    common.files   atomic writes, PNG bytes, paths kept inside a root
    common.cpu     what this machine's CPU can do (vector units, bfloat16, peak FLOP/s)
"""
