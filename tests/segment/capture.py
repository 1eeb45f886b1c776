"""Events made by Segment's own Python library (segment-analytics-python),
captured from its HTTP batch upload by a local server: what a product that
uses Segment sends, anonymous visitors included."""
import gzip, json, threading, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from datetime import datetime, timezone, timedelta
import segment.analytics as analytics

captured = []
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        if self.headers.get('Content-Encoding') == 'gzip':
            body = gzip.decompress(body)
        captured.extend(json.loads(body)['batch'])
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"success":true}')
    def log_message(self, *a): pass

srv = HTTPServer(('127.0.0.1', 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
analytics.write_key = 'test-write-key'
analytics.host = f'http://127.0.0.1:{srv.server_port}'
analytics.sync_mode = True
t0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
at = lambda m: t0 + timedelta(minutes=m)
# A visitor on the marketing site (no account), then the same visitor in the
# product before logging in (an account), then logged-in users.
analytics.page(anonymous_id='anon-7f3', name='Pricing', properties={'path': '/pricing', 'url': 'https://example.com/pricing'}, timestamp=at(0))
analytics.page(anonymous_id='anon-7f3', name='Security', properties={'path': '/security'}, context={'groupId': 'acct-seg'}, timestamp=at(5))
analytics.identify(anonymous_id='anon-7f3', traits={'plan_interest': 'enterprise'}, timestamp=at(6))
for i in range(3):
    uid = f'seg-user-{i}'
    analytics.identify(uid, {'email': f'user{i}@segco.example', 'role': 'member', 'title': 'Engineer'}, timestamp=at(10 + i))
    analytics.group(uid, 'acct-seg', {'name': 'SegCo', 'employees': 800}, timestamp=at(11 + i))
    analytics.track(uid, 'Board Created', {'board': i}, context={'groupId': 'acct-seg'}, timestamp=at(20 + i))
analytics.track(anonymous_id='anon-7f3', event='Card Moved', context={'groupId': 'acct-seg'}, timestamp=at(30))
# Alias calls: a second visitor signs up (its anonymous id becomes a new
# user, the account's 4th), and a user changes ids (still 4 users after).
analytics.page(anonymous_id='anon-9c1', name='Docs', properties={'path': '/docs'}, context={'groupId': 'acct-seg'}, timestamp=at(31))
analytics.alias('anon-9c1', 'seg-user-3', timestamp=at(40))
analytics.alias('seg-user-0', 'seg-user-0-sso', timestamp=at(41))
analytics.track('seg-user-0-sso', 'Board Created', {'board': 4}, context={'groupId': 'acct-seg'}, timestamp=at(42))
analytics.track('seg-user-0', 'Board Created', {'board': 5}, context={'groupId': 'acct-seg'}, timestamp=at(43))
analytics.flush()
srv.shutdown()
for e in captured:
    print(json.dumps(e, separators=(',', ':')))
print(f'{len(captured)} events', file=sys.stderr)
