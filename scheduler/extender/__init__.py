"""The HTTP extender kube-scheduler calls: filter, prioritize, bind, preempt."""
