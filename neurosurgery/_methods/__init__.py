"""Reset methods: strategies (ReDo/ReGraMa resets, CBP, CPR, ReBorn, plasticity injection, shrink
and perturb, full resets, L2 Init), their schedules, the rules that select units, and chains of
them."""
