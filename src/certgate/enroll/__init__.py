"""The built-in enrollment service: a device gets its certificate over HTTPS.

Routes with ``upstream: enroll`` are answered by certgate itself, never
relayed. Module map, one job each:

=========== ================================================================
service     the request and response types, the path -> handler table,
            dispatch; blocking CA work goes to a thread
paths       the URL layout and the access-log redaction of tokens (pure)
=========== ================================================================
"""
