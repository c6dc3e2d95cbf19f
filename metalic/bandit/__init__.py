"""The METALIC contextual bandit: GP reward surrogates over (PDE parameters, arm), the policy
registry, single and sequential engines with one ask/tell API. It sits below ``jobs``: it knows
arms and families, nothing of requests, campaigns or the store."""
