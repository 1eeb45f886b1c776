"""A long tail of small accounts, as every product-led company has: N accounts
of 1-3 users and 6-14 events each (an identify, then tracks and pages),
spread over 60 days, in time order, as Segment-Spec NDJSON.

    python3 benches/longtail.py 200000 /tmp/longtail.ndjson   # ~2 M events

Deterministic (seed 7). Used for the long-tail rows of BENCHMARKS.md.
"""
import random, json, sys, datetime, uuid
random.seed(7)
N=int(sys.argv[1]); out=sys.argv[2]
start=datetime.datetime(2026,9,1,tzinfo=datetime.timezone.utc).timestamp()
span=60*86400
rows=[]
names=["Report Viewed","Dashboard Opened","Invite Sent","Export Clicked","Search Performed","Project Created"]
for a in range(N):
    acct=f"t-{a:06d}"
    users=[f"{acct}-u{i}" for i in range(random.choice([1,1,1,2,2,3]))]
    n=random.randint(6,14)
    first=start+random.random()*(span-86400*5)
    for k in range(n):
        t=first+random.random()*min(span-(first-start),30*86400)
        u=random.choice(users)
        r=random.random()
        if k==0:
            ev={"type":"identify","userId":u,"traits":{"email":f"{u}@{acct}.example"}}
        elif r<0.6:
            ev={"type":"track","event":random.choice(names),"userId":u,"context":{"groupId":acct}}
        else:
            ev={"type":"page","name":"app","userId":u,"properties":{"path":random.choice(["/app","/app/projects","/settings","/pricing"])},"context":{"groupId":acct}}
        if k==0:
            pass
        ev["messageId"]=uuid.UUID(int=random.getrandbits(128)).hex
        rows.append((t,ev))
rows.sort(key=lambda x:x[0])
with open(out,"w") as f:
    for t,ev in rows:
        ev["timestamp"]=datetime.datetime.fromtimestamp(t,datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]+"Z"
        f.write(json.dumps(ev,separators=(",",":"))+"\n")
