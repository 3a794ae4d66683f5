"""High availability (README "High availability"): a warm standby elected through Kafka.

* `election`: the group membership (aiokafka's group protocol on `ha.topic`), the role,
  the fence;
* `records`: the leader record on `ha.topic` (the X connection ids, the last read);
* `leadership`: what the daemon's main loop runs: lead while elected, hand over;
* `group`: what `streamd check` reports of the group.

This package sits beside `streamd.daemon` (it joins the X side and the Kafka side); only the
daemon and `streamd check` import it.
"""
