; SXM shift, a C2C loopback and VXM arithmetic on streams read from MEM (pipelines.rs)
.init MEM.W43 0 f32 1.0 2.0 3.0
.queue MEM.W43
 READ 0, W0
.queue SXM.W.0
 NOP 2
 SHIFT E3, W0, 5
.queue MEM.W42
 NOP 25
 WRITE 0, E3
.queue C2C.0
 NOP 2
 SEND W0
.queue C2C.8
 NOP 12
 RECV W1
.queue MEM.E43
 NOP 14
 WRITE 3, W1
.queue VXM.0
 ADD.i32 W4, #1, #2
 EXP.f32 -, #1.0
 REPEAT 1, 1
.queue MEM.W1
 NOP 4
 WRITE 5, W4
.queue MEM.W2
 NOP 5
 GATHER E12, W4
.queue MEM.W3
 NOP 6
 SCATTER W6, W4
.link 0 8 10
.dump MEM.E43 3 f32 1
