"""Live calls: the charging session (a call's money from claim to settlement), the call
controller of each Asterisk box (AMI events, limits, mid-call warnings), recovery of
calls that outlived their server, and the server lease and heartbeat.
"""
