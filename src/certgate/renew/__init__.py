"""``certgate renew``: a device keeps its certificate alive (issue #13).

schedule  when to renew and how long to sleep (pure)
files     the certificate and key files, replaced crash-safely
client    the request, the check of the answer, the command and its daemon
"""
