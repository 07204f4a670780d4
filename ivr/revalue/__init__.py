"""The 0800 revalue line's services (issue 13): registered customers and their first
codes, which mobile operator a number belongs to, the pool of operators' recharge codes,
and the operators' direct-recharge interfaces. The line's flow (ivr.flows) and the CLI
(ivr.cli) are thin layers over these modules."""
