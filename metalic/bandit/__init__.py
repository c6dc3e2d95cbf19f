"""The METALIC contextual bandit: GP reward surrogates over (context, arm), acquisition policies,
single and sequential engines with one ask/tell API, and campaigns."""
